"""Files: crash-safe writes and JSON (:mod:`.files`), safetensors (:mod:`.tensors`), HDF5 names
(:mod:`.hdf5`), run directories (:mod:`.runs`) and detection formats (:mod:`.detections`)."""

from rcnn_cli.io.files import (
    atomic_open,
    atomic_path,
    file_sha256,
    fsync_path,
    jsonable,
    read_json,
    run_record,
    write_json,
    write_run_record,
)

__all__ = ["atomic_open", "atomic_path", "file_sha256", "fsync_path", "jsonable", "read_json", "run_record",
           "write_json", "write_run_record"]
