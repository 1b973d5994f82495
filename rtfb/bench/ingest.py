"""Ingest: read time per volume per format, and detection latency of the watcher and TCP.

Read times use the real scanner files in ``../shared/data`` when present (Siemens mosaic,
GE slices, Philips PAR/REC, the dcm_qa enhanced and compressed DICOM) and synthetic volumes
(NIfTI; enhanced and classic DICOM written by :mod:`simulator.dicom_writers`). Reads are
timed cold: the readers' caches (frame tables, slices decoded ahead) are emptied first.
Detection latency is measured from the moment a writer thread closes a volume's file in the
export folder (written in chunks, like a scanner) to the moment the consumer's ``get()``
returns the Volume; for a classic slice series, from the moment its last slice file is
closed.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ..ingest import FolderWatcher, TCPReceiver, probe, read_dicom_slices, read_volume
from ..ingest.tcp_framing import TCPSender
from ._timing import summary_ms, time_calls

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pyneal"


def _cold(function, argument):
    from ..ingest import dicom_enhanced, dicom_slices

    dicom_enhanced._TABLES.clear()
    dicom_slices._PRELOADED.clear()
    return function(argument)


def _read_rows(tmp: Path, shape, repeat: int) -> list[str]:
    rows = []
    rng = np.random.default_rng(0)
    data = (1000 + 50 * rng.standard_normal(shape)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    for ext in (".nii", ".nii.gz"):
        path = tmp / f"vol_00001{ext}"
        nib.save(img, path)
        rows.append(("NIfTI " + ext + " " + "x".join(map(str, shape)), path))
    siemens = sorted((SHARED / "Siemens_env" / "funcData").glob("*.dcm"))
    if siemens:
        rows.append(("Siemens mosaic DICOM (64x64x18)", siemens[0]))
    philips = sorted((SHARED / "Philips_env" / "funcData" / "0001").glob("*.par"))
    if philips:
        rows.append(("Philips PAR/REC (80x80x15)", philips[0]))
    rows += _modern_rows(tmp, shape)
    out = []
    for name, path in rows:
        med, p95 = summary_ms(time_calls(lambda p=path: _cold(read_volume, p), repeat))
        pmed, _ = summary_ms(time_calls(lambda p=path: _cold(probe, p), repeat))
        out.append(f"| {name} | {med:.2f} / {p95:.2f} | {pmed:.2f} |")
    ge_dir = SHARED / "GE_env" / "funcData" / "s1925"
    if ge_dir.exists():
        files = sorted(ge_dir.iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[-1]))[:18]
        med, p95 = summary_ms(time_calls(lambda: _cold(read_dicom_slices, files),
                                         max(3, repeat // 5)))
        pmed, _ = summary_ms(time_calls(lambda: _cold(probe, files[0]), repeat))
        out.append(f"| GE single-slice DICOM, 18 files (64x64x18) | {med:.2f} / {p95:.2f} | "
                   f"{pmed:.2f} (per file) |")
    return out


def _simulated_run(tmp: Path, shape, n_volumes: int) -> Path:
    rng = np.random.default_rng(3)
    data = (1000 + 50 * rng.standard_normal(tuple(shape) + (n_volumes,))).astype(np.float32)
    path = tmp / "run.nii"
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    return path


def _modern_rows(tmp: Path, shape) -> list[tuple[str, Path]]:
    """Enhanced DICOM (simulated at ``shape`` and real), JPEG-compressed mosaics."""
    from simulator.dicom_writers import EnhancedDicomSource

    rows = []
    ((name, content),) = EnhancedDicomSource(_simulated_run(tmp, shape, 2)).render_files(1, 2.0)
    (tmp / name).write_bytes(content)
    rows.append((f"enhanced DICOM, simulated XA-like ({'x'.join(map(str, shape))})",
                 tmp / name))
    qa = SHARED.parent / "dcm_qa"
    xa60 = sorted((qa / "siemens_xa60_enh_bold" / "dicom").glob("*"))
    if xa60:
        rows.append(("enhanced DICOM, Siemens XA60 (64x64x10)", xa60[0]))
    ts = qa / "siemens_b17_mosaic_ts" / "dicom"
    for file, what in (("5.dcm", "JPEG lossless"), ("7.dcm", "JPEG-LS"),
                       ("9.dcm", "JPEG 2000")):
        if (ts / file).exists():
            rows.append((f"Siemens mosaic, {what} (64x64x35)", ts / file))
    return rows


def _classic_handover(tmp: Path, shape, n_volumes: int, interval: float):
    """Latency from the last slice file of a volume closed to the Volume returned by get().

    Volumes after the first (the slice count is learned from the first).
    """
    from simulator.dicom_writers import ClassicDicomSource

    source = ClassicDicomSource(_simulated_run(tmp, shape, n_volumes))
    rendered = [source.render_files(v + 1, 2.0) for v in range(n_volumes)]
    folder = tmp / "classic"
    folder.mkdir()
    closed = np.full(n_volumes, np.nan)
    got = np.full(n_volumes, np.nan)

    def write_all():
        start = time.perf_counter()
        for v, files in enumerate(rendered):
            time.sleep(max(0.0, start + v * interval - time.perf_counter()))
            for k, (name, content) in enumerate(files):
                with open(folder / name, "wb") as fh:
                    fh.write(content)
                if k < len(files) - 1:
                    time.sleep(interval / (2 * len(files)))  # slices over half the TR
            closed[v] = time.perf_counter()

    with FolderWatcher(folder, gap_timeout=30.0) as watcher:
        writer = threading.Thread(target=write_all)
        writer.start()
        for _ in range(n_volumes):
            vol = watcher.get(timeout=60)
            got[vol.index] = time.perf_counter()
        writer.join()
    return (got - closed)[1:]


def _watcher_latency(tmp: Path, shape, n_volumes: int, interval: float, chunks: int):
    folder = tmp / "export"
    folder.mkdir()
    rng = np.random.default_rng(1)
    closed = np.full(n_volumes, np.nan)
    got = np.full(n_volumes, np.nan)
    header = nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    data = (1000 + rng.standard_normal(shape)).astype(np.float32)

    def write_all():
        start = time.perf_counter()
        for i in range(n_volumes):
            time.sleep(max(0.0, start + i * interval - time.perf_counter()))
            img = nib.Nifti1Image(data + i, header.affine)
            raw = img.to_bytes()
            step = len(raw) // chunks + 1
            with open(folder / f"vol_{i + 1:05d}.nii", "wb") as fh:
                for k in range(0, len(raw), step):
                    fh.write(raw[k:k + step])
                    fh.flush()
                    time.sleep(0.002)
            closed[i] = time.perf_counter()

    with FolderWatcher(folder) as watcher:
        writer = threading.Thread(target=write_all)
        writer.start()
        for _ in range(n_volumes):
            vol = watcher.get(timeout=10)
            got[vol.index] = time.perf_counter()
        writer.join()
        internal = np.asarray(watcher.stats.latencies)
    return got - closed, internal


def _tcp_latency(shape, n_volumes: int):
    rng = np.random.default_rng(2)
    data = (1000 + rng.standard_normal(shape)).astype(np.float32)
    lat = np.empty(n_volumes)
    key = bytes(range(32))  # authenticated framing v2, as rtfb run --tcp uses it
    with TCPReceiver(key=key) as receiver:
        with TCPSender(receiver.address, key) as sender:
            for i in range(n_volumes):
                sender.send(data, np.eye(4), i, tr=2.0)
                sent = time.perf_counter()
                receiver.get(timeout=10)
                lat[i] = time.perf_counter() - sent
    return lat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench ingest``."""
    parser.add_argument("--shape", default="64x64x36")
    parser.add_argument("--volumes", type=int, default=100, help="volumes for the latency runs")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="seconds between volumes written to the export folder")
    parser.add_argument("--repeat", type=int, default=30, help="repeats of each read")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print markdown tables."""
    shape = tuple(int(v) for v in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("# rtfb.bench ingest\n")
        print("| format | read_volume median / p95 (ms) | probe median (ms) |")
        print("|---|---:|---:|")
        for row in _read_rows(tmp, shape, args.repeat):
            print(row)
        lat, internal = _watcher_latency(tmp, shape, args.volumes, args.interval, chunks=4)
        med, p95 = summary_ms(lat)
        imed, ip95 = summary_ms(internal)
        print(f"\nExport-folder watcher ({args.volumes} NIfTI volumes {args.shape} written in "
              f"4 chunks every {args.interval * 1e3:.0f} ms, polling every 10 ms): detection "
              f"latency from file closed to Volume returned by get(): median {med:.1f} ms, "
              f"p95 {p95:.1f} ms (of which found complete -> queued: median {imed:.2f} ms).")
        n_classic = max(3, min(args.volumes, 30))
        classic = _classic_handover(tmp, shape, n_classic, max(args.interval, 0.5))
        med, p95 = summary_ms(classic)
        print(f"Classic slice series ({n_classic} volumes {args.shape}, one file per slice, "
              f"no slice count in the header; slices of a volume spread over half of "
              f"{max(args.interval, 0.5) * 1e3:.0f} ms): last slice closed -> Volume returned "
              f"by get() (volumes 2..): median {med:.1f} ms, p95 {p95:.1f} ms.")
        tcp = _tcp_latency(shape, args.volumes)
        med, p95 = summary_ms(tcp)
        print(f"TCP receiver ({args.volumes} frames {args.shape} float32): from TCPSender.send "
              f"returned to Volume returned by get(): median {med:.2f} ms, p95 {p95:.2f} ms.")
    return 0
