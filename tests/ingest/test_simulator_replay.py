"""The simulator's replays are read by rtfb exactly like the originals (folder and TCP)."""

import queue
import threading

import nibabel as nib
import numpy as np

from rtfb.ingest import FolderWatcher, TCPReceiver, Volume, read_volume
from simulator import make_subject, stream, write_subject
from tests.ingest._data import siemens_files


def _collect(source, n_expected, timeout=10.0):
    items = []
    while len(items) < n_expected:
        items.append(source.get(timeout=timeout))
    return items


def test_recorded_siemens_mosaics_replayed_like_originals(tmp_path):
    originals = [read_volume(p) for p in siemens_files()]
    export = tmp_path / "export"
    export.mkdir()
    n_vol = 7  # loops the 3 recorded volumes
    with FolderWatcher(export, gap_timeout=2.0) as watcher:
        player = threading.Thread(target=stream, args=(siemens_files()[0].parent, export),
                                  kwargs=dict(tr=1.0, speed=20.0, volumes=n_vol,
                                              manifest=tmp_path / "m.json"))
        player.start()
        items = _collect(watcher, n_vol)
        player.join()
    assert [it.index for it in items] == list(range(n_vol))
    for item in items:
        assert isinstance(item, Volume)
        original = originals[item.index % len(originals)]
        np.testing.assert_array_equal(item.data, original.data)
        np.testing.assert_allclose(item.affine, original.affine, atol=1e-6)
        assert item.tr == original.tr
        assert item.series == original.series


def test_simulator_tcp_stream_into_receiver(tmp_path):
    subject = make_subject(shape=(16, 16, 10), n_volumes=40, seed=2)
    write_subject(subject, tmp_path / "subject")
    bold = nib.load(tmp_path / "subject" / "bold.nii.gz")
    with TCPReceiver() as receiver:
        host, port = receiver.address
        player = threading.Thread(target=stream, args=(tmp_path / "subject",
                                                        f"tcp://{host}:{port}"),
                                  kwargs=dict(speed=200.0, manifest=tmp_path / "m.json"))
        player.start()
        items = _collect(receiver, 40)
        player.join()
        try:
            extra = receiver.get(timeout=0.2)
        except queue.Empty:
            extra = None
    assert extra is None
    assert [it.index for it in items] == list(range(40))
    data = np.asarray(bold.dataobj)
    for item in items:
        np.testing.assert_array_equal(item.data, data[..., item.index])
        np.testing.assert_allclose(item.affine, bold.affine)
        assert item.tr == 2.0
