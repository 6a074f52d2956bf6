"""WhatsUp tasks read from a local copy of the HF dataset ``AdaptVis/all_datasets``, offline.

The copy is built here in the dataset card's exact schema (int64 ``id``, string ``question``, sequence-of-string
``answer``, int64 / string ``image_id`` or string ``image_path``; a ``README.md`` whose YAML front matter lists the
``configs`` and their ``<config>/test-*`` parquet files) from the AdaptVis question files in /work/shared/data, which
hold the same rows. Every config is then loaded through ``visfocus.task`` as users do. COCO and VG image ids are not
available here, so plausible ones are invented: deterministic ints for COCO, digit strings for VG. Skipped without
/work/shared/data or without ``datasets``; the network is refused, so a test that would reach the Hub fails."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from visfocus.benchmarks.base import task
from visfocus.benchmarks.whatsup import SUBSETS, dev_indices
from visfocus.errors import VisfocusError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "adaptvis_prompts").is_dir(), reason=f"no benchmark data at {DATA}")

# The dataset card's configs: rows and image column (name, dtype).
CARD = {
    "COCO_one_obj": (2247, "image_id", "int64"),
    "COCO_two_obj": (440, "image_id", "int64"),
    "Controlled_A": (412, "image_path", "string"),
    "Controlled_B": (408, "image_path", "string"),
    "VG_one_obj": (1160, "image_id", "string"),
    "VG_two_obj": (291, "image_id", "string"),
}
SUBSET_OF = {spec.hub_config: subset for subset, spec in SUBSETS.items()}
COCO_FIRST_ID = {"COCO_one_obj": 139, "COCO_two_obj": 300_000}  # + 97 × row id: inside COCO 2017's id range
VG_FIRST_ID = {"VG_one_obj": 2_315_000, "VG_two_obj": 2_400_000}


def invented_image(config: str, row_id: int) -> int | str:
    if config in COCO_FIRST_ID:
        return COCO_FIRST_ID[config] + 97 * row_id
    return str(VG_FIRST_ID[config] + row_id)


def prompt_rows(config: str) -> list[dict]:
    path = DATA / "adaptvis_prompts" / SUBSETS[SUBSET_OF[config]].prompt_file
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def controlled_image_paths(config: str) -> dict[int, str]:
    """id → the official WhatsUp image path, from this project's derived index files."""
    index = DATA / "whatsup" / SUBSETS[SUBSET_OF[config]].index_file
    return {row["id"]: row["image_path"] for row in map(json.loads, index.read_text().splitlines())}


def card_features(config: str):
    from datasets import Features, Sequence, Value

    _, column, dtype = CARD[config]
    return Features({"id": Value("int64"), "question": Value("string"), "answer": Sequence(Value("string")),
                     column: Value(dtype)})


def write_dataset_copy(folder: Path, configs: list[str]) -> None:
    """``folder`` as the dataset repository: one parquet file per config, written by ``datasets``, and the card."""
    from datasets import Dataset

    dataset_info, card_configs = [], []
    for config in configs:
        rows, (_, column, dtype) = prompt_rows(config), CARD[config]
        images = controlled_image_paths(config) if column == "image_path" else None
        table = {"id": [row["id"] for row in rows], "question": [row["question"] for row in rows],
                 "answer": [row["answer"] for row in rows],
                 column: [images[row["id"]] if images else invented_image(config, row["id"]) for row in rows]}
        dataset = Dataset.from_dict(table, features=card_features(config))
        (folder / config).mkdir(parents=True)
        dataset.to_parquet(folder / config / "test-00000-of-00001.parquet")
        size = dataset.data.nbytes
        dataset_info.append({
            "config_name": config,
            "features": [{"name": "id", "dtype": "int64"}, {"name": "question", "dtype": "string"},
                         {"name": "answer", "sequence": "string"}, {"name": column, "dtype": dtype}],
            "splits": [{"name": "test", "num_bytes": size, "num_examples": len(rows)}],
            "download_size": (folder / config / "test-00000-of-00001.parquet").stat().st_size,
            "dataset_size": size})
        card_configs.append({"config_name": config, "data_files": [{"split": "test", "path": f"{config}/test-*"}]})
    front_matter = yaml.safe_dump({"dataset_info": dataset_info, "configs": card_configs}, sort_keys=False)
    (folder / "README.md").write_text(f"---\n{front_matter}---\n\n# AdaptVis all_datasets (local copy for tests)\n")


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 40, 40)).save(path, "JPEG")
    return path


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory) -> Path:
    """A data root with the dataset copy in ``all_datasets/`` and no prompt files; row 0's image of every config
    exists, each in another of the accepted places."""
    pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("whatsup_hub")
    write_dataset_copy(root / "all_datasets", list(CARD))
    for config in ("COCO_one_obj", "COCO_two_obj"):
        write_jpeg(root / "val2017" / f"{invented_image(config, 0):012d}.jpg")
    for config in ("VG_one_obj", "VG_two_obj"):
        write_jpeg(root / "vg_images" / f"{invented_image(config, 0)}.jpg")
    write_jpeg(root / controlled_image_paths("Controlled_A")[0])  # data/controlled_images/beer-bottle_on_armchair…
    write_jpeg(root / "controlled_clevr" / Path(controlled_image_paths("Controlled_B")[0]).name)
    return root


def _refuse_network(*args, **kwargs):
    raise AssertionError("a WhatsUp local-copy test tried to reach the network")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No Hub and no writes to ~/.cache: the environment for any new import, and ``datasets``' own settings, which
    it reads once at import time."""
    cache = tmp_path / "hf_datasets_cache"
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("HF_DATASETS_CACHE", str(cache))):
        monkeypatch.setenv(name, value)
    if importlib.util.find_spec("datasets") is not None:
        import datasets.config
        import huggingface_hub.constants

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)


def test_the_copy_has_the_cards_exact_schema(hub_root):
    import datasets
    import pyarrow.parquet as pq

    for config, (rows, column, dtype) in CARD.items():
        parquet = hub_root / "all_datasets" / config / "test-00000-of-00001.parquet"
        schema = pq.read_schema(parquet)
        assert [str(schema.field(name).type) for name in ("id", "question", column)] == ["int64", "string", dtype]
        assert str(schema.field("answer").type.value_type) == "string"
        stream = datasets.load_dataset(str(hub_root / "all_datasets"), config, split="test", streaming=True)
        assert stream.features == card_features(config)
        assert sum(1 for _ in stream) == rows


@pytest.mark.parametrize("config", list(CARD))
def test_every_config_loads_with_its_count_and_split(hub_root, config):
    subset, n = SUBSET_OF[config], CARD[config][0]
    full = task(f"whatsup_{subset}", data_root=hub_root)
    dev, test = task(f"whatsup_{subset}_dev", data_root=hub_root), task(f"whatsup_{subset}_test", data_root=hub_root)
    assert len(full) == n and len(dev) == int(0.2 * n) and len(dev) + len(test) == n
    assert [rec.id for rec in full] == [str(i) for i in range(n)]
    assert [rec.id for rec in dev] == [str(i) for i in dev_indices(n)]
    assert sorted({rec.id for rec in dev} | {rec.id for rec in test}, key=int) == [rec.id for rec in full]


@pytest.mark.parametrize("config", list(CARD))
def test_questions_and_answers_equal_the_prompt_files(hub_root, config):
    subset = SUBSET_OF[config]
    from_copy, from_files = task(f"whatsup_{subset}", data_root=hub_root), task(f"whatsup_{subset}", data_root=DATA)
    assert [(rec.id, rec.question, rec.gold) for rec in from_copy] == \
        [(rec.id, rec.question, rec.gold) for rec in from_files]
    for rec, row in zip(from_copy, prompt_rows(config), strict=True):
        assert rec.gold == row["answer"][0].lower() and rec.gold in SUBSETS[subset].options


@pytest.mark.parametrize("config", ["COCO_one_obj", "COCO_two_obj"])
def test_coco_image_ids_become_coco_2017_file_names(hub_root, config):
    records = task(f"whatsup_{SUBSET_OF[config]}", data_root=hub_root).records
    for rec in records:
        image_id = invented_image(config, int(rec.id))
        assert rec.meta["image_id"] == image_id and Path(rec.image_path).name == f"{image_id:012d}.jpg"
        assert Path(rec.image_path).parent.name in ("val2017", "images")  # an absent image: the first candidate
    assert Path(records[0].image_path) == hub_root / "val2017" / f"{invented_image(config, 0):012d}.jpg"
    assert Image.open(records[0].image_path).size == (8, 6)


@pytest.mark.parametrize("config", ["VG_one_obj", "VG_two_obj"])
def test_vg_image_ids_become_vg_image_files(hub_root, config):
    records = task(f"whatsup_{SUBSET_OF[config]}", data_root=hub_root).records
    for rec in records:
        image_id = invented_image(config, int(rec.id))
        assert rec.meta["image_id"] == image_id and Path(rec.image_path) == hub_root / "vg_images" / f"{image_id}.jpg"
    assert Path(records[0].image_path).is_file() and not Path(records[1].image_path).exists()


@pytest.mark.parametrize("config", ["Controlled_A", "Controlled_B"])
def test_controlled_image_paths_become_the_official_files(hub_root, config):
    records = task(f"whatsup_{SUBSET_OF[config]}", data_root=hub_root).records
    official = controlled_image_paths(config)
    for rec in records:
        assert Path(rec.image_path).name == Path(official[int(rec.id)]).name
        assert rec.group == "{}|{}".format(*(Path(official[int(rec.id)]).stem.split("_")[i] for i in (0, -1)))
    assert len({rec.group for rec in records}) == CARD[config][0] // 4
    assert Path(records[0].image_path).is_file()
    if config == "Controlled_A":
        assert records[0].image_path == str(hub_root / "data" / "controlled_images" / "beer-bottle_on_armchair.jpeg")
    else:
        assert records[0].image_path == str(hub_root / "controlled_clevr" / "mug_right_of_knife.jpeg")
        assert records[1].image_path == str(hub_root / official[1])  # absent: the first candidate


def test_the_data_root_may_be_the_copy_itself_or_hold_it_as_adaptvis_all_datasets(hub_root, tmp_path):
    assert len(task("whatsup_vg_two", data_root=hub_root / "all_datasets")) == 291
    shutil.copytree(hub_root / "all_datasets", tmp_path / "AdaptVis" / "all_datasets")
    assert len(task("whatsup_controlled_b_dev", data_root=tmp_path)) == int(0.2 * 408)


def test_prompt_files_come_first_and_take_image_ids_from_a_copy_beside_them(hub_root, tmp_path):
    (tmp_path / "adaptvis_prompts").mkdir()
    for subset in ("coco_two", "controlled_a"):
        shutil.copy(DATA / "adaptvis_prompts" / SUBSETS[subset].prompt_file, tmp_path / "adaptvis_prompts")
    shutil.copytree(hub_root / "all_datasets", tmp_path / "all_datasets")
    coco = task("whatsup_coco_two", data_root=tmp_path)
    assert coco.questions_from == SUBSETS["coco_two"].prompt_file
    assert [rec.meta["image_id"] for rec in coco] == [invented_image("COCO_two_obj", i) for i in range(440)]
    controlled = task("whatsup_controlled_a", data_root=tmp_path)
    assert controlled[0].image_path == str(tmp_path / "data" / "controlled_images" / "beer-bottle_on_armchair.jpeg")


def test_nothing_found_is_one_line_naming_every_layout(tmp_path):
    (tmp_path / "README.md").write_text("# my data\n")  # a plain README is not a dataset card
    with pytest.raises(VisfocusError) as error:
        len(task("whatsup_coco_one", data_root=tmp_path))
    message = str(error.value)
    assert "\n" not in message
    for layout in ("adaptvis_prompts/COCO_QA_one_obj", "prompts/COCO_QA_one_obj", "AdaptVis/all_datasets",
                   str(tmp_path / "all_datasets"), "README.md", "COCO_one_obj/test-*.parquet", "--data_root"):
        assert layout in message


def test_a_folder_that_is_not_a_copy_is_one_clear_error(tmp_path):
    (tmp_path / "all_datasets" / "VG_one_obj").mkdir(parents=True)
    with pytest.raises(VisfocusError, match=r"all_datasets is not a local copy of AdaptVis/all_datasets: .*README"):
        len(task("whatsup_vg_one", data_root=tmp_path))


def test_a_config_missing_from_the_copy_is_one_clear_error(tmp_path):
    pytest.importorskip("datasets")
    copy = tmp_path / "all_datasets"
    write_dataset_copy(copy, ["Controlled_A"])
    with pytest.raises(VisfocusError, match="lists no config Controlled_B .*it lists Controlled_A"):
        len(task("whatsup_controlled_b", data_root=tmp_path))
    shutil.rmtree(copy / "Controlled_A")  # listed in the card, but its parquet files are gone
    with pytest.raises(VisfocusError, match=r"could not read AdaptVis/all_datasets config Controlled_A") as error:
        len(task("whatsup_controlled_a", data_root=tmp_path))
    assert "\n" not in str(error.value)


def test_without_datasets_the_hub_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    monkeypatch.delenv("VISFOCUS_DATA_ROOT", raising=False)
    with pytest.raises(VisfocusError, match=r'`datasets`.*pip install -e "\.\[data\]".*--data_root should'):
        len(task("whatsup_vg_one"))


def test_without_datasets_a_local_copy_says_it_needs_it(hub_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(VisfocusError, match=r"all_datasets config VG_one_obj in .*`datasets`"):
        len(task("whatsup_vg_one", data_root=hub_root))
