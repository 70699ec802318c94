"""The call layer towards textserve services: channels, tokens, and the one upstream-call helper.

Every call one service makes to another (and the gateway's calls to the services) goes
through here: `channels.open_channel` (TLS, bearer token, inherited deadline),
`tokens` (where the client token comes from) and `upstream` (time left, metadata, error
kinds with their structured details, upstream metrics). It imports only core, transport and
the v1 stubs, so it can become the base of a public Python client.
"""
