"""An upload is streamed to a spooled file within its limit and parsed from there, never
held as one bytes object before the video part (no Ray: the ingress's helpers on ASGI)."""

import asyncio

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from dvamn.serving.app import _replay, _spool_limited

BOUNDARY = "dvamn-test-boundary"


def _multipart(video: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="d.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + video
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def _request(body: bytes, chunk: int = 64 * 1024, declare: bool = True) -> Request:
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    if declare:
        headers.append((b"content-length", str(len(body)).encode()))

    async def receive():
        data = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def test_an_upload_is_spooled_then_parsed_into_the_same_video_bytes():
    video = bytes(range(256)) * 12_000  # 3 MB: past the 1 MiB kept in memory
    body = _multipart(video)

    async def run():
        request = _request(body)
        spool = await _spool_limited(request, limit=len(body))
        assert spool._rolled  # on disk, not in memory
        form = await _replay(request, spool).form()
        spool.close()
        try:
            return form["top_k"], await form["video"].read()
        finally:
            await form.close()

    top_k, data = asyncio.run(run())
    assert top_k == "3" and data == video


@pytest.mark.parametrize("declare", [True, False])
def test_an_upload_past_the_limit_is_413_declared_or_not(declare):
    body = _multipart(b"x" * 300_000)
    with pytest.raises(HTTPException) as error:
        asyncio.run(_spool_limited(_request(body, declare=declare), limit=200_000))
    assert error.value.status_code == 413 and "200000" in error.value.detail
