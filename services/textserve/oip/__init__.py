"""Generated protobuf stubs (make proto); do not edit."""
