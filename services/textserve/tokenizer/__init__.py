"""Tokenizer service: text <-> token ids (with offsets), token counts and chat templates over gRPC."""
