"""Conversions for the shared protobuf types of common.proto, used by every service folder."""
