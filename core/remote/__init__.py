"""Remote inference, the wing of core that serves an engine over WebSocket: the wire protocol, the
server, and `RemoteSession`, a client session with the local session's interface. The engine
(core/) imports nothing from here."""
