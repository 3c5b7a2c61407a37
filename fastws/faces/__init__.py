"""The faces: what user code is written against, on one connection interface.

Owns the user-facing APIs: the callback level (``callback``: a
:class:`~fastws.Handler` whose methods the connection calls directly) and the
coroutine level (``asyncio``: ``async def handler(ws)``, a drop-in for
``websockets``). Each face is an attach function the server calls once per
connection; it registers its callbacks with ``Connection.attach`` and uses
nothing of the connection but what it declares.
"""
