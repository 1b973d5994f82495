"""End to end: the simulator plays a faulty scanner, the watcher must deliver exactly the truth.

200 volumes written at TR pace into an export folder with every fault type (drop, duplicate,
truncate, delay, shuffle, corrupt). Every intact volume must come out exactly once, in order,
with its data; every volume without an intact file must be reported missing; nothing raises.
"""

import queue
import threading

import nibabel as nib
import numpy as np
import pytest

from rtfb.ingest import Volume
from rtfb.ingest.ordering import Late, Missing
from rtfb.ingest.watcher import FolderWatcher
from simulator import make_subject, stream, write_subject

FAULTS = {
    "drop": [5, 77],
    "duplicate": [10, 120],
    "truncate": [20, 150],
    "delay": [30, 95],
    "shuffle": [40, 160],
    "corrupt": [50, 180],
}


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    subject = make_subject(shape=(16, 16, 10), n_volumes=200, seed=11)
    write_subject(subject, root / "subject")
    export = root / "export"
    export.mkdir()
    result = {}

    def play():
        result["manifest"] = stream(root / "subject", export, speed=100.0, faults=FAULTS,
                                    delay_seconds=0.15, chunks=3, manifest=root / "m.json")

    items = []
    with FolderWatcher(export, gap_timeout=0.6, incomplete_timeout=0.6) as watcher:
        player = threading.Thread(target=play)
        player.start()
        while True:
            try:
                items.append(watcher.get(timeout=1.5))
            except queue.Empty:
                if not player.is_alive():
                    break
        player.join()
        alive = watcher.running
        stats = watcher.stats
    bold = nib.load(root / "subject" / "bold.nii.gz")
    return dict(items=items, manifest=result["manifest"], alive=alive, stats=stats,
                data=np.asarray(bold.dataobj))


def test_every_intact_volume_exactly_once_in_order(faulty_run):
    manifest = faulty_run["manifest"]
    valid = {v["index"] for v in manifest["volumes"] if v["valid"]}
    invalid = {v["index"] for v in manifest["volumes"] if not v["valid"]}
    assert len(valid) + len(invalid) == 200
    assert invalid == {4, 76, 19, 149, 49, 179}  # dropped, truncated, corrupted (0-based)
    volumes = [it for it in faulty_run["items"] if isinstance(it, Volume)]
    late = [it.volume for it in faulty_run["items"] if isinstance(it, Late)]
    delivered = [v.index for v in volumes] + [v.index for v in late]
    assert sorted(delivered) == sorted(valid)
    assert len(delivered) == len(set(delivered))  # exactly once: duplicates ignored
    assert [v.index for v in volumes] == sorted(v.index for v in volumes)  # in order


def test_missing_volumes_reported(faulty_run):
    missing = {it.index for it in faulty_run["items"] if isinstance(it, Missing)}
    invalid = {v["index"] for v in faulty_run["manifest"]["volumes"] if not v["valid"]}
    assert missing == invalid
    stats = faulty_run["stats"]
    assert stats.missing == len(invalid)


def test_delivered_data_is_the_source(faulty_run):
    data = faulty_run["data"]
    for item in faulty_run["items"]:
        vol = item.volume if isinstance(item, Late) else item
        if isinstance(vol, Volume):
            np.testing.assert_array_equal(vol.data, data[..., vol.index])


def test_watcher_survived(faulty_run):
    assert faulty_run["alive"]
