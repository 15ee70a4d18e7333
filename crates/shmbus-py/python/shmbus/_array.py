"""Named numpy arrays in shared memory, SharedArray-compatible."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _shmbus
from ._errors import NameReused

Shape = Union[int, Sequence[int]]


def _shape(shape: Shape) -> List[int]:
    if isinstance(shape, (int, np.integer)):
        return [int(shape)]
    return [int(d) for d in shape]


class SharedNDArray(np.ndarray):
    """A ``numpy.ndarray`` over a named shared-memory array (what :func:`create` and
    :func:`attach` return). It is an ordinary array in every way, except that pickling the whole
    array sends its *name* (plus the segment's identity), and unpickling re-attaches it: nothing
    is copied through a ``multiprocessing`` queue or pool. A slice, or the result of arithmetic,
    pickles as a copy like any array.

    The mapping lives as long as any array over it: ``arr.base`` (a
    :class:`shmbus.ArrayBuffer`) owns it.
    """

    def __array_finalize__(self, obj: Any) -> None:  # views stay this class; nothing to copy
        pass

    def _buffer(self) -> Optional["_shmbus.ArrayBuffer"]:
        b = self.base
        while isinstance(b, np.ndarray):
            b = b.base
        return b if isinstance(b, _shmbus.ArrayBuffer) else None

    def _is_whole(self) -> bool:
        buf = self._buffer()
        return (
            buf is not None
            and self.__array_interface__["data"][0] == buf.address
            and self.nbytes == buf.nbytes
            and tuple(self.shape) == tuple(buf.shape)
            and self.flags.c_contiguous
            and self.dtype.str == buf.dtype
        )

    @property
    def name(self) -> Optional[str]:
        """The name this array was created or attached by (None for a copy)."""
        buf = self._buffer()
        return buf.name if buf is not None else None

    def __reduce__(self):
        if self._is_whole():
            buf = self._buffer()
            assert buf is not None
            return (_reattach, (buf.name, buf.read_only, buf.identity))
        return np.asarray(self).view(np.ndarray).__reduce__()

    def __repr__(self) -> str:
        if self._is_whole():
            return (
                f"SharedNDArray(name={self.name!r}, dtype={self.dtype}, shape={self.shape}, "
                f"writeable={self.flags.writeable})\n{np.asarray(self).view(np.ndarray)!r}"
            )
        return np.asarray(self).view(np.ndarray).__repr__()

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        # Results of ufuncs are new arrays, not shared ones.
        out = np.asarray(obj).view(np.ndarray)
        if return_scalar and out.ndim == 0:
            return out[()]
        return out


def _reattach(name: str, ro: bool, identity: Tuple[int, int]) -> SharedNDArray:
    arr = attach(name, ro=ro)
    buf = arr._buffer()
    if buf is None or tuple(buf.identity) != tuple(identity):
        raise NameReused(
            f"{name!r} now names another array (created {buf.identity if buf else None}, "
            f"pickled {tuple(identity)})"
        )
    return arr


def _typestr(dtype: Any) -> str:
    return np.dtype(dtype).str


def create(
    name: str,
    shape: Shape,
    dtype: Any = float,
    *,
    scoped: bool = False,
    mode: int = 0o600,
) -> SharedNDArray:
    """Creates the named array and returns a numpy array over it, zero-filled.

    ``name`` is ``"shm://NAME"`` (or bare ``"NAME"``) for shared memory or ``"file:///PATH"``
    for a file. Like SharedArray's, arrays are persistent: they outlive their creator until
    :func:`delete`; ``scoped=True`` removes it when the last process using it leaves.
    Raises :class:`AlreadyExists` if the name is taken, :class:`WrongDtype` for a dtype shmbus
    cannot store.
    """
    return _shmbus.create_array(SharedNDArray, name, _shape(shape), _typestr(dtype), scoped, mode)


def attach(name: str, ro: bool = False, *, timeout: Optional[float] = None) -> SharedNDArray:
    """Attaches the existing named array: its dtype and shape come from the segment. With
    ``ro=True`` the mapping is read-only and the array is not writeable."""
    return _shmbus.attach_array(SharedNDArray, name, ro, timeout)


def delete(name: str) -> None:
    """Removes the array's name. Arrays already attached stay valid until dropped."""
    _shmbus.delete_array(name)


class ArrayDesc:
    """What :func:`list` reports of one array (SharedArray's ``list()`` entries)."""

    __slots__ = ("name", "dtype", "shape", "persistent")

    def __init__(self, d: Dict[str, Any]) -> None:
        self.name: str = d["name"]
        self.dtype: np.dtype = np.dtype(d["dtype"])
        self.shape: Tuple[int, ...] = tuple(d["shape"])
        self.persistent: bool = d["persistent"]

    def __repr__(self) -> str:
        return f"ArrayDesc(name={self.name!r}, dtype={self.dtype}, shape={self.shape})"


def list() -> List[ArrayDesc]:  # noqa: A001 - SharedArray's name
    """Every named array in shared memory."""
    return [ArrayDesc(d) for d in _shmbus.list_arrays()]
