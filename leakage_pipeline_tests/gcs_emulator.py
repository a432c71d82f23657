"""gcp-storage-emulator as the tests use it: enforcing ``ifGenerationMatch`` as real GCS does.

The emulator ignores generation preconditions, which real GCS enforces (HTTP 412) and the output
lock relies on: with the emulator as it ships, two steps creating the lock at once would both
succeed. :func:`generation_preconditions_enforced` makes its object insert (creations and rewrites
alike) and delete handlers enforce them, and its reads answer a ``generation`` that is not the
object's with 404 as GCS does (hashing reads each image at its listed generation);
``python -m leakage_pipeline_tests.gcs_emulator`` serves such an emulator as a process of its own
(``make test-deploy``'s stack, ``bench.gcs``).
"""

import argparse
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus


@contextmanager
def generation_preconditions_enforced(required: bool = False) -> Iterator[None]:
    """While inside, this process's emulator servers refuse a write whose ``ifGenerationMatch`` is not
    the object's generation (0: absent). With ``required``, stricter than GCS, they also refuse a write
    without one (HTTP 400): for code that must never write unconditionally, so that a write which lost
    its precondition fails every time instead of racing unseen."""
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def refuse(response, status: HTTPStatus, message: str) -> None:
        response.status = status
        response.json({"error": {"code": status.value, "message": message}})

    def enforcing(handler, object_name):
        def checked(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            if not wanted:
                if required:
                    return refuse(response, HTTPStatus.BAD_REQUEST, "a write without ifGenerationMatch")
                return handler(request, response, storage, *args, **kwargs)
            try:
                current = str(storage.get_file_obj(request.params["bucket_name"], object_name(request))["generation"])
            except NotFound:
                current = "0"
            if current != wanted[0]:
                return refuse(response, HTTPStatus.PRECONDITION_FAILED, "conditionNotMet")
            return handler(request, response, storage, *args, **kwargs)
        checked.__wrapped__ = handler
        return checked

    def pinned(handler):
        """A read of ``generation=N`` finds nothing when the object's generation is not N (no versioning)."""
        def checked(request, response, storage, *args, **kwargs):
            wanted = request.query.get("generation")
            if wanted:
                try:
                    current = str(storage.get_file_obj(request.params["bucket_name"],
                                                       request.params["object_id"])["generation"])
                except NotFound:
                    current = None
                if current != wanted[0]:
                    return refuse(response, HTTPStatus.NOT_FOUND, f"no generation {wanted[0]} of this object")
            return handler(request, response, storage, *args, **kwargs)
        checked.__wrapped__ = handler
        return checked

    def inserted_name(request):
        return request.query["name"][0] if "name" in request.query else request.data["meta"]["name"]

    replaced = []  # (route, method, what it served before): an enclosing enforcement is restored after
    for _, methods in emulator.HANDLERS:
        for method, handler, name in ((emulator.POST, objects.insert, inserted_name),
                                      (emulator.DELETE, objects.delete, lambda r: r.params["object_id"])):
            current = methods.get(method)
            if getattr(current, "__wrapped__", current) is handler:
                methods[method] = enforcing(handler, name)
                replaced.append((methods, method, current))
        current = methods.get(emulator.GET)
        if getattr(current, "__wrapped__", current) in (objects.get, objects.download):
            methods[emulator.GET] = pinned(getattr(current, "__wrapped__", current))
            replaced.append((methods, emulator.GET, current))
    try:
        yield
    finally:
        for methods, method, previous in replaced:
            methods[method] = previous


# Connections the emulator's listening socket queues. socketserver's default is 5: a client with more
# requests in flight (real GCS takes hundreds) overflows it, and each overflowing connection stalls
# for the kernel's one-second SYN-ACK retransmission, which measures the emulator, not the client.
LISTEN_BACKLOG = 128


def without_emulator_artifacts(set_attribute=setattr) -> None:
    """Two costs of the emulator that GCS does not have, removed from the in-memory servers this process
    starts: the listen backlog of 5 (see :data:`LISTEN_BACKLOG`), and the JSON dump of every object's
    metadata after each write (for a restart from disk: an in-memory server has none), which makes a
    write cost as much as the bucket holds. ``set_attribute``: ``monkeypatch.setattr`` in a test."""
    from gcp_storage_emulator.storage import Storage

    set_attribute(http.server.HTTPServer, "request_queue_size", LISTEN_BACKLOG)
    set_attribute(Storage, "_write_config_to_file", lambda self: None)


def main() -> None:
    parser = argparse.ArgumentParser(description="gcp-storage-emulator in memory on 127.0.0.1, enforcing "
                                                 "generation preconditions")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--default-bucket", help="a bucket to create")
    args = parser.parse_args()
    from gcp_storage_emulator.server import create_server

    without_emulator_artifacts()
    with generation_preconditions_enforced():
        create_server("127.0.0.1", args.port, in_memory=True, default_bucket=args.default_bucket).start()
        threading.Event().wait()  # until the test stops this process


if __name__ == "__main__":
    main()
