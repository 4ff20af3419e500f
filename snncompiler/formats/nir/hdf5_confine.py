"""HDF5 files (how NIR is stored) that would make the reader open other files are refused.

HDF5 lets a file point elsewhere: a dataset with *external storage* keeps its bytes in another
file (``/etc/passwd`` as easily as a sibling), an *external link* opens another HDF5 file, a
*virtual dataset* maps pieces of other files, and a user-defined link type or filter asks the
library to load a plugin. None of these appear in NIR files, so any of them is an error naming
the dataset or link. Soft links are paths inside the same file; the only way out of the file
goes through one of the above, which is refused wherever it sits.

This module imports nothing from snncompiler (only h5py): the NIR loader runs it in a child
process, before a single dataset is read, as part of its time-limited probe.
"""

from __future__ import annotations

import sys

#: The filters HDF5 and h5py provide themselves (deflate, shuffle, fletcher32, szip, nbit,
#: scale-offset, h5py's lzf): any other id would make HDF5 look for a plugin library.
BUILTIN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


def outside_reference(path) -> str | None:
    """The first object in the HDF5 file ``path`` that reaches outside it, described in one
    line (``dataset '/node/w': ...``), or None when the file is self-contained."""
    import h5py

    problems: list[str] = []
    with h5py.File(path, "r") as f:

        def check(name: bytes, info) -> int | None:
            text = "/" + name.decode("utf-8", "replace")
            if info.type == h5py.h5l.TYPE_EXTERNAL:
                other_file = f.id.links.get_val(name)[0]
                problems.append(
                    f"link '{text}' is an external link into the file {_describe(other_file)}; "
                    "NIR files are self-contained"
                )
            elif info.type not in (h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_SOFT):
                problems.append(f"link '{text}' has the user-defined link type {info.type}")
            elif info.type == h5py.h5l.TYPE_HARD:
                problem = _dataset_problem(h5py, f, name, text)
                if problem:
                    problems.append(problem)
            return 1 if problems else None  # a non-None return stops the walk at the first problem

        # visits every link, recursing through hard links only: nothing outside is opened
        f.id.links.visit(check, info=True)
    return problems[0] if problems else None


def _dataset_problem(h5py, f, name: bytes, text: str) -> str | None:
    """Why the object behind the hard link ``name`` reaches outside the file, if it does."""
    obj = h5py.h5o.open(f.id, name)
    if not isinstance(obj, h5py.h5d.DatasetID):
        return None
    plist = obj.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        sources = sorted({plist.get_virtual_filename(i) for i in range(plist.get_virtual_count())})
        return f"dataset '{text}' is a virtual dataset reading {_describe(', '.join(sources))}; NIR files are self-contained"
    if plist.get_external_count():
        files = [plist.get_external(i)[0] for i in range(plist.get_external_count())]
        return f"dataset '{text}' keeps its data in external file(s) {_describe(b', '.join(files))}; NIR files are self-contained"
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in BUILTIN_FILTERS:
            return f"dataset '{text}' needs HDF5 filter {code}, which is not built in (it would load a plugin)"
    return None


def _describe(value) -> str:
    """A file name from HDF5 (bytes or str), quoted and on one line, for a message."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return repr(" ".join(str(value).split())[:200])


def main(argv: list[str]) -> int:
    """The child's side of the NIR probe: exit 3 when the file reaches outside itself (nothing
    of it read), else read it once with ``nir.read``."""
    path = argv[0]
    if outside_reference(path):
        return 3
    import nir

    nir.read(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
