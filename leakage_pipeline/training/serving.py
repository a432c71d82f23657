"""The HTTP API of a trained model: ``GET /health`` and ``POST /predict`` (multipart field ``file``).

It listens on 127.0.0.1 unless told otherwise. Bodies over the upload limit are refused with
413 before they are read whole; bytes that are not a decodable image get 415; both with a message.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import UnidentifiedImageError

from leakage_pipeline.audit.pixel_limit import ImageTooLarge
from leakage_pipeline.training.model_files import Classifier

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class UploadLimit:
    """ASGI middleware refusing request bodies over ``max_bytes``, whether declared or streamed.

    A streamed body that grows past the limit gets the 413 at once; the application is told the
    client disconnected, and whatever it answers to that is dropped.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"request body exceeds the {self.max_bytes}-byte upload limit"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        received, refused, started = 0, False, False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes and not started:
                refused = True
                await self._refuse(send)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if not refused:
                started = started or message["type"] == "http.response.start"
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


def create_app(classifier: Classifier, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    app = FastAPI(title="leakage-pipeline model", description="Class probabilities of an uploaded image.")
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    lock = threading.Lock()  # one forward pass at a time; torch uses every core for each

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "classes": classifier.class_names, "device": str(classifier.device),
                "image_size": classifier.preprocessing.size, "channels": classifier.preprocessing.channels}

    @app.post("/predict")
    def predict(file: UploadFile = File(..., description="the image, as multipart field 'file'")) -> dict:
        data = file.file.read()
        if not data:
            raise HTTPException(400, f"{file.filename or 'the upload'} is empty")
        try:
            with lock:
                return {"filename": file.filename, **classifier.predict_bytes(data)}
        except ImageTooLarge as error:
            raise HTTPException(413, f"{file.filename}: {error}") from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise HTTPException(415, f"{file.filename}: not an image that can be decoded ({error})") from error

    return app


def serve(model_dir: Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    uvicorn.run(create_app(Classifier.load(model_dir), max_upload_bytes), host=host, port=port, log_level="info")
