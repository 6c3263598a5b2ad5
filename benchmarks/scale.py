"""The data path at the paper's scale, simulated: Conceptual Captions' 3.3M images and captions and a
100-language text corpus with Wikipedia's unequal sizes, small features so it fits a laptop disk.

Measures, in order:

1. writer: RegionShardWriter images/s (one process), m3p-import-regions images/s with 1 and 2
   workers (reference-format HDF5 input), and MB/s at the paper's image size (100 x 2048);
2. index: RegionStore open seconds (index file mapped; built from the shards), and the memory a
   data-loader worker adds when it touches the whole index (4 forked workers, read from
   /proc/self/smaps: private vs shared), beside the same ids held as Python objects;
3. fairseq-train start-up: seconds to the first update (--max-update 1; the multitask_multimodal
   task, xmlm+mmlm+mrm+vlm, m3p_tiny), with the phases seen in its log;
4. the task's datasets: seconds to load each part, and samples/s per objective (one worker's work).

    python benchmarks/scale.py                  # 3.3M images: ~4 min and ~2 GB of disk on 2 quiet cores
    python benchmarks/scale.py --images 200000  # quick

Prints progress on stderr and one JSON line at the end.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import ROOT, emit, set_threads
from m3p_fairseq.data.region_store import RegionIndex

# XLM-R's 100 languages with a stand-in for the paper's per-language sizes, which it does not list:
# each language's Wikipedia article count in thousands (Wikimedia's List of Wikipedias, 2023,
# rounded; the romanized and second-script variants XLM-R adds have no Wikipedia of their own and
# get a small share). What matters here is the shape: three orders of magnitude from en to xh.
WIKI_SIZES_K = {
    "en": 6700, "de": 2800, "sv": 2550, "fr": 2500, "nl": 2100, "ru": 1900, "es": 1850, "it": 1800, "pl": 1550,
    "ja": 1370, "zh": 1350, "vi": 1280, "uk": 1250, "ar": 1200, "pt": 1100, "fa": 950, "ca": 730, "sr": 670,
    "id": 650, "ko": 630, "no": 600, "fi": 550, "hu": 520, "cs": 520, "tr": 520, "ro": 440, "eu": 400,
    "ms": 360, "he": 340, "eo": 330, "hy": 300, "da": 290, "bg": 290, "cy": 270, "sk": 240, "et": 235,
    "uz": 230, "be": 230, "kk": 230, "el": 220, "lt": 210, "hr": 210, "gl": 190, "ur": 190, "az": 190,
    "sl": 180, "ka": 165, "hi": 160, "th": 160, "ta": 160, "la": 140, "mk": 140, "bn": 135, "lv": 120,
    "af": 110, "my": 110, "sq": 95, "mg": 95, "mr": 95, "bs": 90, "te": 85, "ml": 85, "ky": 80, "br": 80,
    "sw": 75, "jv": 72, "su": 62, "ku": 60, "is": 58, "ga": 58, "fy": 50, "pa": 50, "tl": 45, "ne": 32,
    "kn": 31, "gu": 30, "ha": 30, "mn": 24, "si": 23, "ps": 20, "or": 17, "sd": 17, "gd": 16, "am": 15,
    "yi": 15, "km": 12, "sa": 12, "as": 12, "so": 9, "ug": 6, "lo": 5, "xh": 2, "om": 1.5,
    "zh_Hant": 20, "hi_rom": 5, "bn_rom": 3, "ur_rom": 3, "ta_rom": 2, "te_rom": 2, "my_zaw": 2,
}
CC_IMAGES = 3_318_333  # Conceptual Captions training pairs (one caption per image)
PAPER = {"regions": 100, "feat_dim": 2048}
VOCAB = 1000


def log(msg):
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_ids(n):
    return np.char.add("cc3m_train_", np.char.zfill(np.arange(n).astype(str), 7)).astype("S")


# ---- 1. writer -------------------------------------------------------------------------------------

def simulated_detector_h5(path, n, regions, feat_dim, num_classes, seed=0, block=500_000):
    """Detector output in the M3P reference code's HDF5 layout (what m3p-import-regions hdf5 reads)."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_id", data=image_ids(n))
        wh = f.create_dataset("wh", (n, 2), np.float32)  # height, width, as the reference reads it
        f.create_dataset("num_boxes", data=np.full(n, regions, np.int32))
        bbox = f.create_dataset("bbox", (n, regions, 4), np.float32)
        feats = f.create_dataset("features", (n, regions, feat_dim), np.float32)
        objs = f.create_dataset("objects", (n, regions), np.int32)
        for s in range(0, n, block):
            e = min(n, s + block)
            hw = rng.uniform(200, 1000, (e - s, 2)).astype(np.float32)
            wh[s:e] = hw
            x1 = rng.uniform(0, 0.5, (e - s, regions)) * hw[:, 1:2]
            y1 = rng.uniform(0, 0.5, (e - s, regions)) * hw[:, 0:1]
            bbox[s:e] = np.stack([x1, y1, x1 + 0.4 * hw[:, 1:2], y1 + 0.4 * hw[:, 0:1]], -1)
            feats[s:e] = rng.random((e - s, regions, feat_dim), dtype=np.float32)
            objs[s:e] = rng.integers(0, num_classes, (e - s, regions))


def writer_rate(folder, n, regions, feat_dim, num_classes=1600):
    """RegionShardWriter alone, one process, the same small image over and over (as issue 17 timed it)."""
    from m3p_fairseq.data.region_store import RegionShardWriter

    rng = np.random.default_rng(0)
    feats = rng.random((regions, feat_dim), dtype=np.float32)
    boxes = np.tile(np.array([[1, 1, 50, 50]], np.float32), (regions, 1))
    classes = rng.integers(0, num_classes, regions)
    ids = [f"img{i:08d}" for i in range(n)]
    path = os.path.join(folder, "writer.h5")
    t0 = time.perf_counter()
    with RegionShardWriter(path, feat_dim=feat_dim, num_classes=num_classes, max_regions=max(100, regions)) as w:
        for image_id in ids:
            w.add(image_id, feats, boxes, classes, 640, 480)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(path)
    os.remove(path)
    return {"images": n, "regions": regions, "feat_dim": feat_dim, "seconds": round(seconds, 2),
            "images_per_s": round(n / seconds), "mb_per_s": round(size / seconds / 1e6, 1)}


def cpu_seconds():
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def convert_rate(source, manifest, workers):
    """m3p-import-regions' images/s, and its CPU time per image (its workers' included): on a machine
    whose cores are busy, the wall time says how much CPU it was given, the CPU time what it needs."""
    from preprocess.detectors import convert

    c0, t0 = cpu_seconds(), time.perf_counter()
    n = convert("hdf5", [source], manifest, progress=False, workers=workers)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"workers": workers, "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds),
            "cpu_s": round(cpu, 1), "cpu_us_per_image": round(cpu / n * 1e6, 1)}


# ---- 2. index memory -------------------------------------------------------------------------------

def process_memory(pid="self"):
    """MB of the process's memory, from one pass over /proc/PID/smaps. ``private`` counts anonymous pages
    only (heap, numpy arrays, Python objects): what a forked worker really holds for itself. A page of a
    mapped file is page cache, one copy for every process, but smaps calls it private while one process
    alone maps it at that moment (and dirty while a freshly written file waits for write-back); those
    pages are ``file_private``, not counted."""
    total = {"Rss": 0.0, "Private_Clean": 0.0, "Private_Dirty": 0.0, "Shared_Clean": 0.0, "Shared_Dirty": 0.0}
    anon = {"Private_Clean": 0.0, "Private_Dirty": 0.0}
    anonymous = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
            if head:
                name = head.group(1).strip()
                anonymous = not name or name in ("[heap]", "[stack]") or name.startswith("[anon")
                continue
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m and m.group(1) in total:
                mb = int(m.group(2)) / 1024.0
                total[m.group(1)] += mb
                if anonymous and m.group(1) in anon:
                    anon[m.group(1)] += mb
    private = anon["Private_Clean"] + anon["Private_Dirty"]
    return {"private": private, "private_dirty": anon["Private_Dirty"],
            "file_private": total["Private_Clean"] + total["Private_Dirty"] - private,
            "shared": total["Shared_Clean"] + total["Shared_Dirty"], "rss": total["Rss"]}


def mapping_mb(path, pid="self"):
    """Rss / private / shared MB of the mappings of ``path`` in /proc/PID/smaps."""
    total, current = {"rss": 0.0, "private": 0.0, "shared": 0.0}, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.rstrip().endswith(" " + path)
            elif current:
                m = re.match(r"(\w+):\s+(\d+) kB", line)
                if m and m.group(1) == "Rss":
                    total["rss"] += int(m.group(2)) / 1024.0
                elif m and m.group(1).startswith("Private_"):
                    total["private"] += int(m.group(2)) / 1024.0
                elif m and m.group(1).startswith("Shared_"):
                    total["shared"] += int(m.group(2)) / 1024.0
    return {k: round(v, 1) for k, v in total.items()}


class IndexProbe:
    """A map-style dataset of one item per worker: the item is what the worker's memory did while it
    used the whole table (every page of every array, as batching and reading do between them), then
    read images from every shard."""

    def __init__(self, store, workers, object_ids=None):
        self.store, self.workers, self.object_ids = store, workers, object_ids

    def __len__(self):
        return self.workers

    def __getitem__(self, i):
        import torch

        torch.set_num_threads(1)
        store = self.store
        before = process_memory()
        if self.object_ids is not None:  # the layout RegionStore had: one Python str per image
            touched = sum(len(x) for x in self.object_ids)
        else:  # every page of every array of the table
            touched = sum(int(getattr(store.index, name).view(np.uint8).sum() > 0) for name in RegionIndex.ARRAYS)
        after_index = process_memory()
        if self.object_ids is None:
            for row in np.linspace(0, len(store) - 1, 2 * len(store.shard_paths)).astype(np.int64):
                store.get(int(row))
        after_reads = process_memory()
        out = {"touched": touched, "before": before, "after_index": after_index, "after_reads": after_reads}
        if store.index.source is not None:
            out["index_file"] = mapping_mb(os.path.abspath(store.index.source))
        return out


def worker_memory(store, workers, object_ids=None):
    import torch

    loader = torch.utils.data.DataLoader(IndexProbe(store, workers, object_ids), batch_size=None,
                                         num_workers=workers)
    results = list(loader)
    growth = [r["after_index"]["private"] - r["before"]["private"] for r in results]
    summary = {
        "workers": workers,
        "index_private_mb_per_worker": round(max(growth), 1),
        "index_private_dirty_mb_per_worker": round(max(r["after_index"]["private_dirty"] - r["before"]["private_dirty"]
                                                       for r in results), 1),
        "shared_mb_per_worker": round(float(np.mean([r["after_index"]["shared"] for r in results])), 1),
        "worker_private_mb_before": round(float(np.mean([r["before"]["private"] for r in results])), 1),
        "index_file_private_mb_per_worker": round(max(r["after_index"]["file_private"] - r["before"]["file_private"]
                                                      for r in results), 1),
    }
    if object_ids is None:  # HDF5's own structures for each shard a worker has opened
        reads = max(r["after_reads"]["private"] - r["after_index"]["private"] for r in results)
        summary["reads_private_mb_per_worker"] = round(reads, 1)
        summary["reads_private_mb_per_open_shard"] = round(reads / len(store.shard_paths), 2)
    if "index_file" in results[0]:
        summary["index_file_mapping_mb"] = results[0]["index_file"]
    return summary


def index_section(manifest, workers):
    from m3p_fairseq.data.region_store import RegionStore

    t0 = time.perf_counter()
    store = RegionStore(manifest)
    mapped_s = time.perf_counter() - t0
    assert store.index.source is not None, "the converter wrote no index file"
    t0 = time.perf_counter()
    built = RegionIndex.build(store.shard_paths, manifest)
    built_s = time.perf_counter() - t0
    index_mb = sum(getattr(store.index, name).nbytes for name in RegionIndex.ARRAYS) / 1e6
    t0 = time.perf_counter()
    ids = list(store.image_ids)
    rows = store.indices_of(ids)
    lookup_us = (time.perf_counter() - t0) / len(ids) * 1e6
    assert (rows == np.arange(len(ids))).all()
    log(f"index: open {mapped_s:.2f} s mapped, {built_s:.1f} s built; {index_mb:.0f} MB; "
        f"{lookup_us:.2f} us per id; worker memory ...")
    out = {"images": len(store), "shards": len(store.shard_paths), "index_mb": round(index_mb, 1),
           "open_s_mapped": round(mapped_s, 3), "open_s_built": round(built_s, 2),
           "lookup_us_per_id": round(lookup_us, 2),
           "workers_mapped": worker_memory(store, workers)}
    store.index = built  # the same store with the table built in this process (no index file)
    out["workers_built"] = worker_memory(store, workers)
    out["workers_python_object_ids"] = worker_memory(store, workers, np.array(ids, dtype=object))
    return out


# ---- 3. text, captions, fairseq-train ---------------------------------------------------------------

def write_tokens(prefix, sizes, rng, vocab=VOCAB):
    """A fairseq-preprocess (--dataset-impl mmap) output: random pieces, each line ending in </s>."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    sizes = np.asarray(sizes, dtype=np.int64)
    tokens = rng.integers(4, vocab - 1, int(sizes.sum()), dtype=np.uint16)  # below <mask>, the last id
    tokens[np.cumsum(sizes) - 1] = 2
    tokens.tofile(prefix + ".bin")
    with MMapIndexedDataset.Index.writer(prefix + ".idx", np.uint16) as index:
        index.write(sizes)


def simulated_text(data, manifest, sentences, seed=0):
    """dict.txt, text/{lang}/train (sentences shared out by Wikipedia's sizes, at least 50 each) and
    captions/en/train with one caption per image of the store."""
    from m3p_fairseq.data.region_store import RegionStore

    rng = np.random.default_rng(seed)
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {VOCAB - i}\n" for i in range(VOCAB - 4 - 1))  # + 4 specials + <mask> = VOCAB
    total_k = sum(WIKI_SIZES_K.values())
    per_lang = {}
    for lang, k in WIKI_SIZES_K.items():
        per_lang[lang] = n = max(50, int(round(sentences * k / total_k)))
        os.makedirs(os.path.join(data, "text", lang), exist_ok=True)
        write_tokens(os.path.join(data, "text", lang, "train"), rng.integers(5, 60, n), rng)
    caps = os.path.join(data, "captions", "en")
    os.makedirs(caps, exist_ok=True)
    store = RegionStore(manifest)
    write_tokens(os.path.join(caps, "train"), rng.integers(6, 20, len(store)), rng)  # CC: ~10 words a caption
    with open(os.path.join(caps, "train.ids"), "wb") as f:
        f.write(b"\n".join(store.index.ids.tolist()) + b"\n")
    os.makedirs(os.path.join(data, "regions"), exist_ok=True)
    return {"languages": len(per_lang), "sentences": int(sum(per_lang.values())),
            "largest": max(per_lang.items(), key=lambda kv: kv[1]),
            "languages_at_the_floor_of_50": sum(n == 50 for n in per_lang.values()), "captions": len(store)}


def train_startup(data, regions_dir, workers, batch):
    """fairseq-train to its first update; the time each phase's log line appeared."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "fairseq-train"), data, "--user-dir", "m3p_fairseq",
           "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain",
           "--objectives", "xmlm,mmlm,mrm,vlm", "--regions-dir", regions_dir, "--cpu", "--optimizer", "adam",
           "--lr", "1e-4", "--max-update", "1", "--batch-size", str(batch), "--num-workers", str(workers),
           "--disable-validation", "--no-save", "--log-format", "simple", "--log-interval", "1", "--seed", "1",
           # fairseq makes the save folder even with --no-save: keep it in the work folder, not the caller's
           "--save-dir", os.path.join(data, "checkpoints")]
    phases = {"task set up": "dictionary:", "datasets loaded": "train: xmlm=", "model built": "model params",
              "first update": "num_updates"}
    seen, tail = {}, []
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        for name, needle in phases.items():
            if name not in seen and needle in line:
                seen[name] = round(time.perf_counter() - t0, 1)
    proc.wait()
    total = time.perf_counter() - t0
    if proc.returncode != 0 or "first update" not in seen:
        raise RuntimeError("fairseq-train failed:\n" + "\n".join(tail))
    return {"num_workers": workers, "batch": batch, "seconds_to_first_update": seen["first update"],
            "seconds_total": round(total, 1), "phases_s": seen}


def dataset_section(data, regions_dir, batch, batches, text_sentences, objectives=("xmlm", "mmlm", "mrm", "vlm")):
    """Seconds to load each objective's datasets (a task of that objective alone), then one worker's
    samples/s per objective with all four."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from data_pipeline import time_iterator

    import m3p_fairseq  # noqa: F401
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    def task_of(names):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            data, "--task", "multitask_multimodal", "--arch", "m3p_tiny", "--criterion", "m3p_pretrain", "--cpu",
            "--objectives", ",".join(names), "--regions-dir", regions_dir, "--batch-size", str(batch)])
        t0 = time.perf_counter()
        task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
        task.load_dataset("train")
        return task, time.perf_counter() - t0

    load = {o: round(task_of([o])[1], 2) for o in objectives}
    task, load["all"] = task_of(objectives)
    load["all"] = round(load["all"], 2)
    import torch

    torch.set_num_threads(1)  # what a data-loader worker has
    rate, per_objective, n = time_iterator(task, batch, batches)
    return {"load_s": load, "xmlm_load_s_per_million_sentences": round(load["xmlm"] / text_sentences * 1e6, 2),
            "samples_per_s_per_worker": round(rate, 1), "per_objective_samples_per_s": per_objective,
            "samples_timed": n}


# ---- main ------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=CC_IMAGES, help="simulated images (and captions)")
    p.add_argument("--regions", type=int, default=2, help="regions per simulated image")
    p.add_argument("--feat-dim", type=int, default=8, help="feature size of the simulated images")
    p.add_argument("--writer-images", type=int, default=1_000_000, help="images for the bare writer's rate")
    p.add_argument("--full-size-images", type=int, default=300,
                   help="images of the paper's size (100 x 2048) for the writer's MB/s")
    p.add_argument("--text-sentences", type=int, default=2_000_000, help="sentences of the 100-language corpus")
    p.add_argument("--num-workers", type=int, default=4, help="data-loader workers (memory, fairseq-train)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=400, help="batches timed for samples/s")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "m3p-scale"), help="work folder (rebuilt)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    threads = set_threads(a.threads)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    record = {"benchmark": "scale", "threads": threads, "cpus": os.cpu_count(),
              "load_average": [round(x, 1) for x in os.getloadavg()], "images": a.images, "regions": a.regions,
              "feat_dim": a.feat_dim}
    try:
        log(f"writer: {a.writer_images} images, then {a.full_size_images} of 100 x 2048")
        record["writer_small"] = writer_rate(a.out, a.writer_images, a.regions, a.feat_dim)
        record["writer_full_size"] = writer_rate(a.out, a.full_size_images, PAPER["regions"], PAPER["feat_dim"])
        log(f"writer: {record['writer_small']['images_per_s']} images/s; "
            f"{record['writer_full_size']['mb_per_s']} MB/s at the paper's size")
        source = os.path.join(a.out, "detector.h5")
        simulated_detector_h5(source, a.images, a.regions, a.feat_dim, 1600)
        record["convert"] = []
        for workers in (1, 2):
            manifest = os.path.join(a.out, f"regions-w{workers}", "train.json")
            record["convert"].append(convert_rate(source, manifest, workers))
            log(f"m3p-import-regions --workers {workers}: {record['convert'][-1]['images_per_s']} images/s")
        shutil.rmtree(os.path.join(a.out, "regions-w1"))
        os.remove(source)
        regions_dir = os.path.join(a.out, "regions-w2")
        manifest = os.path.join(regions_dir, "train.json")
        record["disk_mb"] = {"store": round(sum(os.path.getsize(os.path.join(regions_dir, f))
                                                for f in os.listdir(regions_dir)) / 1e6, 1)}
        record["index"] = index_section(manifest, a.num_workers)
        log(f"index: worker private growth {record['index']['workers_mapped']['index_private_mb_per_worker']} MB "
            f"(mapped), {record['index']['workers_built']['index_private_mb_per_worker']} MB (built), "
            f"{record['index']['workers_python_object_ids']['index_private_mb_per_worker']} MB (Python objects)")
        data = os.path.join(a.out, "data")
        record["text"] = simulated_text(data, manifest, a.text_sentences)
        log(f"text: {record['text']}")
        record["fairseq_train"] = train_startup(data, regions_dir, a.num_workers, a.batch)
        log(f"fairseq-train: first update after {record['fairseq_train']['seconds_to_first_update']} s")
        record["datasets"] = dataset_section(data, regions_dir, a.batch, a.batches, record["text"]["sentences"])
        log(f"datasets: {record['datasets']}")
        record["projection"] = projection(record)
    finally:
        if not a.keep:
            shutil.rmtree(a.out, ignore_errors=True)
    record["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    emit(record)


def projection(r):
    """The measured rates carried to the paper's full size (3.3M images of 100 x 2048 float16)."""
    full_bytes = CC_IMAGES * PAPER["regions"] * (PAPER["feat_dim"] * 2 + 4 * 4 + 4)
    per_image = r["images"] and r["index"]["index_mb"] / r["images"]
    w1, w2 = r["convert"]
    return {
        "store_tb": round(full_bytes / 1e12, 2),
        "writer_hours_one_process_at_measured_mb_per_s": round(full_bytes / (r["writer_full_size"]["mb_per_s"] * 1e6) / 3600, 1),
        "converter_hours_one_process_small_images": round(CC_IMAGES / w1["images_per_s"] / 3600, 2),
        "converter_speedup_2_workers": round(w2["images_per_s"] / w1["images_per_s"], 2),
        "converter_cpu_ratio_2_workers_vs_1": round(w2["cpu_us_per_image"] / w1["cpu_us_per_image"], 2),
        "converter_images_per_s_per_free_core": round(1e6 / w2["cpu_us_per_image"]),
        "index_mb_at_3_3m": round(per_image * CC_IMAGES, 1),
    }


if __name__ == "__main__":
    main()
