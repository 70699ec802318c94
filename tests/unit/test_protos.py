"""The generated stubs are fresh, and the API follows our protobuf conventions (STYLE §4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from textserve import protogen


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    """Regenerating from protos/ gives byte-identical stubs (run `make proto` when this fails)."""
    protogen.generate(tmp_path)
    fresh = protogen.generated_files(tmp_path)
    committed = protogen.generated_files(protogen.OUT_ROOT)
    assert fresh, "no stubs generated"
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"stale generated stubs (run `make proto`): {stale}"


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("protos")
    target = out / "set.pb"
    protogen.generate(out, descriptor_set=target)
    parsed = descriptor_pb2.FileDescriptorSet()
    parsed.ParseFromString(target.read_bytes())
    return parsed


def _our_files(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in descriptor_set.file if f.package == "textserve.v1"]


def test_package_is_versioned(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    files = _our_files(descriptor_set)
    assert {Path(f.name).stem for f in files} >= {
        "common",
        "tokenizer",
        "embedding",
        "classifier",
        "generation",
    }


def test_every_rpc_has_its_own_request_and_response(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    seen_inputs: set[str] = set()
    for file in _our_files(descriptor_set):
        for service in file.service:
            # ModelControl (models.proto) keeps the name the model-lifecycle contract gave it.
            assert service.name.endswith("Service") or service.name == "ModelControl", service.name
            for method in service.method:
                request = method.input_type.rsplit(".", 1)[-1]
                response = method.output_type.rsplit(".", 1)[-1]
                if method.server_streaming and not method.client_streaming and request == "GenerateRequest":
                    # GenerateStream shares GenerateRequest with Generate: same input, two deliveries.
                    assert response == "GenerateStreamResponse"
                    continue
                assert request == f"{method.name}Request", f"{service.name}.{method.name} takes {request}"
                assert response == f"{method.name}Response", (
                    f"{service.name}.{method.name} returns {response}"
                )
                assert request not in seen_inputs
                seen_inputs.add(request)


def _enums(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    found = [(e.name, e) for e in file.enum_type]

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        for enum in message.enum_type:
            found.append((f"{prefix}.{enum.name}", enum))
        for nested in message.nested_type:
            walk(nested, f"{prefix}.{nested.name}")

    for message in file.message_type:
        walk(message, message.name)
    return found


def test_enum_zero_values_are_unspecified(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    import re

    for file in _our_files(descriptor_set):
        for name, enum in _enums(file):
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
            assert enum.value[0].number == 0, name
            assert enum.value[0].name == f"{prefix}_UNSPECIFIED", f"{name}: {enum.value[0].name}"
            for value in enum.value:
                assert value.name.startswith(prefix + "_"), f"{name}.{value.name} lacks prefix {prefix}_"


def test_every_element_has_a_comment(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    """Every service, rpc, message, field, enum and enum value carries a leading comment."""
    missing: list[str] = []
    for file in _our_files(descriptor_set):
        commented = {
            tuple(location.path)
            for location in file.source_code_info.location
            if location.leading_comments.strip() or location.trailing_comments.strip()
        }

        def need(
            path: tuple[int, ...],
            label: str,
            commented: set[tuple[int, ...]] = commented,
            name: str = file.name,
        ) -> None:
            if path not in commented:
                missing.append(f"{name}: {label}")

        for si, service in enumerate(file.service):
            need((6, si), service.name)
            for mi, method in enumerate(service.method):
                need((6, si, 2, mi), f"{service.name}.{method.name}")

        def walk_message(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], label: str) -> None:
            need(path, label)
            for fi, field in enumerate(message.field):
                need((*path, 2, fi), f"{label}.{field.name}")
            for ni, nested in enumerate(message.nested_type):
                if not nested.options.map_entry:
                    walk_message(nested, (*path, 3, ni), f"{label}.{nested.name}")
            for ei, enum in enumerate(message.enum_type):
                walk_enum(enum, (*path, 4, ei), f"{label}.{enum.name}")

        def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], label: str) -> None:
            need(path, label)
            for vi, value in enumerate(enum.value):
                need((*path, 2, vi), f"{label}.{value.name}")

        for mi, message in enumerate(file.message_type):
            walk_message(message, (4, mi), message.name)
        for ei, enum in enumerate(file.enum_type):
            walk_enum(enum, (5, ei), enum.name)
    assert not missing, "uncommented proto elements:\n" + "\n".join(missing)


def test_fields_are_lower_snake_case(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    import re

    for file in _our_files(descriptor_set):
        for message in file.message_type:
            for field in message.field:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", field.name), f"{message.name}.{field.name}"


def test_moved_shared_messages_keep_their_names_and_old_module() -> None:
    """ChatMessage and TokenIds moved from tokenizer.proto to common.proto: the wire (full name,
    field numbers) is unchanged, and tokenizer_pb2 still exports them (`import public`)."""
    from textserve.v1 import common_pb2, tokenizer_pb2

    assert tokenizer_pb2.ChatMessage is common_pb2.ChatMessage
    assert tokenizer_pb2.TokenIds is common_pb2.TokenIds
    chat = common_pb2.ChatMessage.DESCRIPTOR
    assert chat.full_name == "textserve.v1.ChatMessage"
    assert [(f.name, f.number) for f in chat.fields] == [("role", 1), ("content", 2)]
    ids = common_pb2.TokenIds.DESCRIPTOR
    assert ids.full_name == "textserve.v1.TokenIds"
    assert [(f.name, f.number) for f in ids.fields] == [("ids", 1)]
