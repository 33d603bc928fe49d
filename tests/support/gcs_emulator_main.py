"""Run `gcp-storage-emulator` with one gap filled: object downloads carry `x-goog-generation`.

Real GCS sends the object's generation with every download; tensorstore (Orbax's OCDBT checkpoints) reads it to make
its conditional manifest updates, and fails with "Malformed StorageGeneration" when it is missing. The emulator
omits it, so this wrapper adds it to the download handler before starting the unchanged server.
Usage: python tests/support/gcs_emulator_main.py start --host 127.0.0.1 --port P --in-memory
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    """The emulator's download, plus the generation headers GCS always sends."""
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # not found: the original handler already answered 404
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


objects.download = download_with_generation  # before the server module builds its routing table from it

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import (
        main,  # imports the server, which now routes to the wrapper
    )

    sys.exit(main(sys.argv[1:]))
