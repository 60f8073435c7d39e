"""Datasets from the user's own files: `npz:PATH` (arrays) and `folder:PATH` (an ImageFolder tree).

Both give images in [0, 1], NCHW float32, like the named datasets; their `DatasetInfo` (classes,
channels, size, mean/std of the training split) is computed from the files, never downloaded, and
trains without augmentation. A relative PATH is taken from the current directory; `resolve_name`
makes it absolute, which is what a run file should store so the run reloads from anywhere.
"""

from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from awp.data import DatasetInfo, Splits
from awp.errors import UserError

PREFIXES = ("npz:", "folder:")
NPZ_LAYOUTS = "arrays x and y (one set, used as both splits), or x_train, y_train, x_test and y_test"
FOLDER_LAYOUT = "PATH/CLASS/IMAGE files, or PATH/train/CLASS/IMAGE and PATH/test/CLASS/IMAGE"
GRAY_MODES = ("1", "L", "LA")  # PIL modes read as one channel; every other mode is read as RGB


def is_file_dataset(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIXES)


def _split_name(name: str) -> tuple[str, Path]:
    """("npz" or "folder", the absolute path) of a file dataset name."""
    kind, _, path = name.partition(":")
    if not path:
        raise UserError(f"dataset {name!r} names no path; accepted: npz:PATH or folder:PATH")
    return kind, Path(path).expanduser().resolve()


def resolve_name(name: str) -> str:
    """`npz:PATH` / `folder:PATH` with PATH made absolute (from the current directory); other names as given."""
    if not is_file_dataset(name):
        return name
    kind, path = _split_name(name)
    return f"{kind}:{path}"


def _stamp(kind: str, path: Path) -> int:
    """Changes when the files change (size and modification time of each), so cached infos stay true."""
    if kind == "npz":
        st = path.stat()
        return hash((st.st_mtime_ns, st.st_size))
    listing = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            listing.append((root, f, st.st_mtime_ns, st.st_size))
    return hash(tuple(listing))


def file_dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of a file dataset (cached while its files are unchanged)."""
    kind, path = _split_name(name)
    _check_exists(kind, path, name)
    return _cached_info(kind, path, _stamp(kind, path))


@functools.lru_cache(maxsize=8)
def _cached_info(kind: str, path: Path, stamp: int) -> DatasetInfo:
    if kind == "npz":
        return _load_npz(path).info
    return _folder_info(path)


def load_file_dataset(name: str) -> Splits:
    """Train and test splits of a file dataset; with one set of examples both splits are that set."""
    kind, path = _split_name(name)
    _check_exists(kind, path, name)
    if kind == "npz":
        return _load_npz(path)
    return _load_folder(path, file_dataset_info(name))


def _check_exists(kind: str, path: Path, name: str) -> None:
    if kind == "npz" and not path.is_file():
        other = "; for a folder of images use folder:PATH" if path.is_dir() else ""
        raise UserError(f"dataset {name!r}: no .npz file at {str(path)!r}{other}")
    if kind == "folder" and not path.is_dir():
        other = "; for an .npz archive use npz:PATH" if path.is_file() else ""
        raise UserError(f"dataset {name!r}: no folder at {str(path)!r}{other}")


# ---------------------------------------------------------------------------------------------
# Statistics: one copy of the math for arrays and for streamed images
# ---------------------------------------------------------------------------------------------


class ChannelStats:
    """Per-channel mean and std of images added in batches ([N, C, H, W]), accumulated in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        s, sq = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        self.total = s if self.total is None else self.total + s
        self.squares = sq if self.squares is None else self.squares + sq
        self.n += x.shape[0] * x.shape[2] * x.shape[3]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std); a constant channel gets std 1 (nothing to scale, and Normalize needs std > 0)."""
        mean = self.total / self.n
        std = (self.squares / self.n - mean.square()).clamp(min=0).sqrt()
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _stats_of(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    stats = ChannelStats()
    for i in range(0, len(x), chunk):
        stats.add(x[i : i + chunk])
    return stats.result()


def _info(name: str, num_classes: int, shape: tuple[int, int, int], stats: tuple) -> DatasetInfo:
    c, h, w = shape
    return DatasetInfo(name, num_classes, c, h, stats[0], stats[1], needs_download=False, width=0 if w == h else w)


# ---------------------------------------------------------------------------------------------
# npz:PATH
# ---------------------------------------------------------------------------------------------


def _npz_array(z: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError:  # allow_pickle=False refuses object arrays: nothing is ever unpickled
        raise UserError(f"array {key!r} in {str(path)!r} holds Python objects, which are never unpickled; "
                        f"store numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"array {key!r} in {str(path)!r} cannot be read ({e})") from None


def _pixels(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """[N, C, H, W] float pixels in [0, 1] (uint8 divided by 255) as float32; else one line saying why."""
    where = f"{key!r} in {str(path)!r}"
    if x.ndim != 4:
        hint = f" (add a channel axis: {key}[:, None])" if x.ndim == 3 else ""
        raise UserError(f"{where} has shape {list(x.shape)}; expected [N, C, H, W]{hint}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3, 4):
        raise UserError(f"{where} has shape {list(x.shape)}, which looks channels-last; store it as "
                        f"[N, C, H, W] ({key}.transpose(0, 3, 1, 2))")
    if len(x) == 0:
        raise UserError(f"{where} holds no examples")
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{where} has dtype {x.dtype}; accepted: float pixels in [0, 1], or uint8 (0..255)")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
        raise UserError(f"{where} has values in [{lo:g}, {hi:g}]; float pixels must lie in [0, 1] "
                        f"(uint8 pixels are divided by 255)")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(y: np.ndarray, key: str, path: Path, n: int, x_key: str) -> torch.Tensor:
    """[N] int64 class indices >= 0, as many as images; else one line saying why."""
    where = f"{key!r} in {str(path)!r}"
    if y.ndim != 1:
        raise UserError(f"{where} has shape {list(y.shape)}; expected [N] class indices")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{where} has dtype {y.dtype}; labels must be integer class indices 0..K-1")
    if len(y) != n:
        raise UserError(f"{where} has {len(y)} labels but {x_key!r} has {n} images")
    if len(y) and int(y.min()) < 0:
        raise UserError(f"{where} has a negative label ({int(y.min())}); labels must be class indices 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


def _open_npz(path: Path, accepted: str) -> np.lib.npyio.NpzFile:
    """The .npz archive at `path`, read with allow_pickle=False; else one line (`accepted`: the layouts)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{str(path)!r} is not a readable .npz archive ({' '.join(str(e).split())})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"{str(path)!r} holds a single array (.npy), not an .npz archive; accepted: {accepted}")
    return z


def _load_npz(path: Path) -> Splits:
    """Arrays `x` [N, C, H, W] (float in [0, 1] or uint8) and `y` [N] (integer labels): one set, used as
    both the train and the test split (the command picks the split it needs); or `x_train`, `y_train`,
    `x_test`, `y_test`. num_classes is the largest label + 1. Read with allow_pickle=False."""
    with _open_npz(path, NPZ_LAYOUTS) as z:
        keys = set(z.files)
        one, two = ("x", "y"), ("x_train", "y_train", "x_test", "y_test")
        if set(two) <= keys and keys & set(one):
            raise UserError(f"{str(path)!r} holds both x/y and x_train/y_train/x_test/y_test; keep one layout")
        layout = two if set(two) <= keys else one if set(one) <= keys else None
        if layout is None:
            wanted = two if keys & set(two) else one
            missing = [k for k in wanted if k not in keys]
            found = ", ".join(sorted(keys)) or "no arrays"
            raise UserError(f"{str(path)!r} lacks {', '.join(missing)} (it has {found}); accepted: {NPZ_LAYOUTS}")
        arrays = {k: _npz_array(z, k, path) for k in layout}
    sets = []
    for xk, yk in zip(layout[0::2], layout[1::2]):
        x = _pixels(arrays[xk], xk, path)
        sets.append((x, _labels(arrays[yk], yk, path, len(x), xk)))
    shapes = {tuple(x.shape[1:]) for x, _ in sets}
    if len(shapes) > 1:
        raise UserError(f"{str(path)!r}: x_train images are {list(sets[0][0].shape[1:])} but x_test images are "
                        f"{list(sets[1][0].shape[1:])}; both splits need one [C, H, W]")
    (x_tr, y_tr), (x_te, y_te) = sets[0], sets[-1]
    num_classes = int(max(int(y.max()) for _, y in sets)) + 1
    info = _info(f"npz:{path}", num_classes, tuple(x_tr.shape[1:]), _stats_of(x_tr))
    train = TensorDataset(x_tr, y_tr)
    return Splits(info, train, train, train if len(sets) == 1 else TensorDataset(x_te, y_te))


# ---------------------------------------------------------------------------------------------
# folder:PATH
# ---------------------------------------------------------------------------------------------


def _open_image(path: str):
    """An image as PIL "L" (grayscale modes) or "RGB" (every other mode)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("L" if img.mode in GRAY_MODES else "RGB")


def _class_dirs(root: Path) -> list[str]:
    """Sorted names of the class subfolders (hidden ones, like .ipynb_checkpoints, are not classes)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _roots(path: Path) -> tuple[Path, Path | None]:
    """(train root, test root or None when PATH is both): PATH/train and PATH/test, or PATH itself."""
    train, test = path / "train", path / "test"
    if train.is_dir() and test.is_dir():
        return train, test
    if train.is_dir() or test.is_dir():
        have, lack = (train, test) if train.is_dir() else (test, train)
        raise UserError(f"folder {str(path)!r} has {have.name}/ but no {lack.name}/; accepted: {FOLDER_LAYOUT}")
    return path, None


def _image_folders(path: Path) -> tuple[list[str], Dataset, Dataset | None]:
    """(classes, train ImageFolder, test ImageFolder or None), both with the train classes' indices."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    class FixedClasses(ImageFolder):
        """An ImageFolder whose class indices are given (the test split must use the train split's)."""

        def __init__(self, root: Path, classes: list[str], allow_empty: bool) -> None:
            self.fixed = classes
            super().__init__(str(root), transform=T.ToTensor(), loader=_open_image, allow_empty=allow_empty)

        def find_classes(self, directory):
            return list(self.fixed), {c: i for i, c in enumerate(self.fixed)}

    train_root, test_root = _roots(path)
    classes = _class_dirs(train_root)
    if not classes:
        raise UserError(f"folder {str(train_root)!r} has no class subfolders; accepted: {FOLDER_LAYOUT}")
    if test_root is not None:
        extra = sorted(set(_class_dirs(test_root)) - set(classes))
        if extra:
            raise UserError(f"{str(test_root)!r} has class folder(s) {', '.join(extra)} that "
                            f"{str(train_root)!r} lacks; the test classes must be among the train classes")
    try:
        train = FixedClasses(train_root, classes, allow_empty=False)
        test = FixedClasses(test_root, classes, allow_empty=True) if test_root is not None else None
    except FileNotFoundError as e:  # a class folder without a single image file
        raise UserError(f"folder {str(path)!r}: {' '.join(str(e).split())}") from None
    if test is not None and not len(test):
        raise UserError(f"folder {str(test_root)!r} holds no images; accepted: {FOLDER_LAYOUT}")
    return classes, train, test


def _image_shape(file: str) -> tuple[int, int, int]:
    """[C, H, W] from the image header (nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            return (1 if img.mode in GRAY_MODES else 3, img.height, img.width)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"image {file!r} cannot be read ({' '.join(str(e).split())})") from None


def _one_shape(sets: list[Dataset]) -> tuple[int, int, int]:
    """The [C, H, W] every image shares; the first that differs is one line naming it."""
    first, shape = None, None
    for ds in sets:
        for file, _ in ds.samples:
            s = _image_shape(file)
            if shape is None:
                first, shape = file, s
            elif s != shape:
                raise UserError(f"image {file!r} is {s[2]}x{s[1]} with {s[0]} channel(s), but {first!r} is "
                                f"{shape[2]}x{shape[1]} with {shape[0]}; all images of a folder dataset need one size")
    return shape


def _folder_info(path: Path) -> DatasetInfo:
    """Classes from the train folders, one image shape, mean/std streamed over the decoded train images."""
    classes, train, test = _image_folders(path)
    shape = _one_shape([train] + ([test] if test is not None else []))
    stats = ChannelStats()
    for start in range(0, len(train), 256):
        stats.add(torch.stack([train[i][0] for i in range(start, min(start + 256, len(train)))]))
    return _info(f"folder:{path}", len(classes), shape, stats.result())


def _load_folder(path: Path, info: DatasetInfo) -> Splits:
    """ImageFolder splits (decoded lazily, ToTensor: pixels in [0, 1]); PATH itself is both when it has
    no train/ and test/ subfolders."""
    _, train, test = _image_folders(path)
    return Splits(info, train, train, train if test is None else test)


# ---------------------------------------------------------------------------------------------
# Unlabelled image sets (RST): npz:PATH with an array x (or x_train), or folder:PATH; labels are ignored
# ---------------------------------------------------------------------------------------------

UNLABELED_FORMS = "npz:PATH (an array x or x_train, [N, C, H, W]) or folder:PATH (images in class folders, the classes ignored)"


def image_shape(name: str) -> tuple[int, int, int]:
    """[C, H, W] of the images of unlabelled set `name`, read from the file headers only (no pixels)."""
    if not is_file_dataset(name):
        raise UserError(f"unlabelled set {name!r} is not accepted; accepted: {UNLABELED_FORMS}")
    kind, path = _split_name(name)
    _check_exists(kind, path, name)
    if kind == "folder":
        return _folder_info(path).input_shape
    try:
        with zipfile.ZipFile(path) as zf:
            key = next((k for k in ("x", "x_train") if f"{k}.npy" in zf.namelist()), None)
            if key is None:
                names = sorted(n.removesuffix(".npy") for n in zf.namelist())
                raise UserError(f"{str(path)!r} has no array x or x_train (it has {', '.join(names) or 'none'}); "
                                f"accepted: {UNLABELED_FORMS}")
            with zf.open(f"{key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape = read(fh)[0]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{str(path)!r} is not a readable .npz archive ({' '.join(str(e).split())})") from None
    if len(shape) != 4:
        raise UserError(f"{key!r} in {str(path)!r} has shape {list(shape)}; expected [N, C, H, W]")
    return tuple(int(n) for n in shape[1:])


def load_images(name: str) -> torch.Tensor:
    """Every image of an unlabelled set `name` as [N, C, H, W] float32 in [0, 1], in memory; labels it may
    carry are ignored. Anything else is one line naming what is accepted."""
    if not is_file_dataset(name):
        raise UserError(f"unlabelled set {name!r} is not accepted; accepted: {UNLABELED_FORMS}")
    kind, path = _split_name(name)
    _check_exists(kind, path, name)
    if kind == "npz":
        with _open_npz(path, UNLABELED_FORMS) as z:
            key = next((k for k in ("x", "x_train") if k in z.files), None)
            if key is None:
                raise UserError(f"{str(path)!r} has no array x or x_train (it has {', '.join(sorted(z.files)) or 'none'}); "
                                f"accepted: {UNLABELED_FORMS}")
            return _pixels(_npz_array(z, key, path), key, path)
    splits = load_file_dataset(name)
    return torch.stack([splits.train_eval[i][0] for i in range(len(splits.train_eval))])
