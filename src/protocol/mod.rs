//! The host protocol: JSON-RPC 2.0 wire types, VDSM error codes, the client (controller side) and the server (agent side).
