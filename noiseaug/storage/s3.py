"""s3fs's file system as noiseaug uses it: requests without ``Expect: 100-continue``.

botocore asks for the handshake on every request with a file-like body (each
upload, each part of a multipart one), and aiohttp then waits for the server's
interim answer before it sends the body, under no timeout: the read timeout
is armed only once the body is out. An endpoint that stops answering (a
network that drops packets, a stalled proxy) kept an upload, and the run, waiting
for ever, and two Ctrl-Cs could not end it. Without the header the body goes at
once, the read timeout bounds the wait, and s3fs's and botocore's retries give
up in bounded time. Imported only for s3:// URLs (the ``s3`` extra), by the
driver and by every Dask worker that unpickles the file system.
"""

from __future__ import annotations

from typing import Any

import s3fs


class S3FileSystem(s3fs.S3FileSystem):
    """s3fs's S3 file system; every client it makes sends no ``Expect: 100-continue``."""

    async def set_session(self, refresh: bool = False, kwargs: dict[str, Any] = {}) -> Any:  # noqa: B006 (s3fs's)
        client = await super().set_session(refresh=refresh, kwargs=kwargs)  # asked before every request
        if client is not self.__dict__.get("_plain_client"):  # a new client: once each
            client.meta.events.register("before-call.s3", _without_expect, unique_id="noiseaug-without-expect")
            self._plain_client = client
        return client


def _without_expect(params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's ``add_expect_header`` undone, after it (handlers of an event run in the order registered)."""
    params.get("headers", {}).pop("Expect", None)
