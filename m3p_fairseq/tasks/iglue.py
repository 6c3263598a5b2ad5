"""IGLUE's understanding tasks on the M3P understanding model: one registered task per job, sharing a base.

    fairseq-train DATA --user-dir m3p_fairseq --task m3p_xvnli --criterion m3p_iglue --arch m3p_base \\
        --pretrained-checkpoint m3p.pt --valid-subset valid --best-checkpoint-metric accuracy \\
        --maximize-best-checkpoint-metric ...
    fairseq-validate DATA --user-dir m3p_fairseq --task m3p_xvnli --criterion m3p_iglue \\
        --path checkpoint_best.pt --valid-subset test.ar,test.es,test.fr,test.ru

| task | IGLUE job | images | target | head (models/iglue_heads.py) |
|---|---|---|---|---|
| ``m3p_xvnli`` | SNLI-VE -> XVNLI, visual entailment | 1 | contradiction=0 / neutral=1 / entailment=2 | ``classes`` |
| ``m3p_xgqa`` | GQA -> xGQA, visual question answering | 1 | soft scores over the answer vocabulary | ``answers`` |
| ``m3p_marvl`` | NLVR2 -> MaRVL, reasoning over two images | 2 | false=0 / true=1 | ``pair`` |

Data (``m3p-import-iglue`` writes it from IGLUE's published files; one DATA folder per task)::

    DATA/dict.txt, DATA/sentencepiece.bpe.model
    DATA/{task}/{lang}/{split}.{bin,idx}     the texts (hypothesis, question, statement), binarized
    DATA/{task}/{lang}/{split}.jsonl         per text line: its image id(s) and target (data/iglue_dataset.py)
    DATA/xgqa/answers.txt                    xGQA: the answer vocabulary, one answer a line, in label order
    DATA/regions/{split}.{lang}.json         the split's region store for that language, else regions/{split}.json

Splits: ``train``, ``valid`` (IGLUE's dev), ``test``, few-shot ``train_{shots}`` (xGQA's target-language
dev is that language's ``valid``), translate-test ``test_mt``. As in the other tasks a split may
name its languages (``test.de``, ``valid.en+de``); a plain ``train*`` split reads --train-langs, any
other plain split every language that has it (or --eval-langs). The retrieval jobs (Flickr30K ->
xFlickr&CO, WIT) are the ``m3p_retrieval`` task on ``captions/`` (see ``evaluation/iglue.py``).
"""
import logging
from dataclasses import dataclass

from fairseq.tasks import register_task

from ..checkpoints import UNDERSTANDING
from ..data.code_switch import CodeSwitchConfig
from ..data.iglue_dataset import IGLUE_JOBS, MARVL, XGQA, XVNLI, iglue_dataset, langs_with
from ..errors import M3PInputError
from ..models.iglue_heads import add_iglue_head
from ..utils import split_list
from .base import FinetuneLangsConfig, M3PDataConfig, M3PTaskBase, PretrainedConfig, split_and_langs

logger = logging.getLogger(__name__)


@dataclass
class IGLUEConfig(M3PDataConfig, PretrainedConfig, FinetuneLangsConfig, CodeSwitchConfig):
    """IGLUE trains on English (few-shot: on the target language, --train-langs)."""


class IGLUETaskBase(M3PTaskBase):
    """An IGLUE job (data/iglue_dataset.py's ``IGLUEJob``): texts with one or two images each, a head on the
    pooled output, accuracy."""

    model_kind = UNDERSTANDING
    job = None

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        self.labels = self.job.labels(self.data_path())  # class names by index, or xGQA's answers

    # the job's name is the folder under DATA, the head's name and the results key
    name = property(lambda self: self.job.name)
    head_name = name
    target = property(lambda self: self.job.target)
    images_per_example = property(lambda self: self.job.images_per_example)

    def criterions(self):
        return ("m3p_iglue",)

    def num_classes(self):
        return len(self.labels)

    def num_answers(self):
        return len(self.labels) if self.job is XGQA else None

    def build_model(self, cfg, from_checkpoint=False):
        return super().build_model(cfg, from_checkpoint, prepare=lambda model: add_iglue_head(
            model, self.head_name, self.job.head_kind, self.num_classes()))

    def folder(self, lang=None):
        return self.job.folder(self.data_path(), lang)

    def langs_with(self, split):
        """The languages that have ``split`` (sorted), else one line naming the folder."""
        return langs_with(self, self.job, split)

    def default_langs(self, split):
        if split.startswith("train"):
            return split_list(self.cfg.train_langs)
        return split_list(self.cfg.eval_langs) or self.langs_with(split)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        base, langs = split_and_langs(split, [])
        langs = langs or self.default_langs(base)
        self.datasets[split] = dataset = iglue_dataset(self, self.job, self.labels, base, langs, self.cfg.seed)
        logger.info(f"{split}: {len(dataset)} {self.name} examples ({','.join(langs)})")


@register_task("m3p_xvnli", dataclass=IGLUEConfig)
class M3PXVNLITask(IGLUETaskBase):
    """SNLI-VE -> XVNLI: does the image entail, contradict or leave open the hypothesis?"""

    job = XVNLI


@register_task("m3p_marvl", dataclass=IGLUEConfig)
class M3PMaRVLTask(IGLUETaskBase):
    """NLVR2 -> MaRVL: is the statement true of the pair of images (left, right)?"""

    job = MARVL


@register_task("m3p_xgqa", dataclass=IGLUEConfig)
class M3PXGQATask(IGLUETaskBase):
    """GQA -> xGQA: the answer to a question about the image, out of the answer vocabulary
    (``DATA/xgqa/answers.txt``, IGLUE's ``trainval_ans2label``: 1,842 answers)."""

    job = XGQA


IGLUE_TASKS = {cls.job.name: cls for cls in (M3PXVNLITask, M3PXGQATask, M3PMaRVLTask)}
assert set(IGLUE_TASKS) == set(IGLUE_JOBS)


def iglue_task_of(job, task, checkpoint="the checkpoint"):
    """The IGLUE task of ``job`` that reads ``task``'s data: ``task`` itself when it is that job's; when ``task``
    trained ``job`` as an objective beside others (multitask_multimodal ``--objectives xvnli,tcl``), the job's
    task over the same settings (its head is the model's head of that name)."""
    if isinstance(task, IGLUETaskBase) and task.name == job:
        return task
    if job in getattr(task, "objectives", ()):
        return IGLUE_TASKS[job](task.cfg, task.dictionary)
    have = getattr(task, "name", None) or task.cfg._name
    raise M3PInputError(f"{checkpoint}: fine-tuned for {have}, not {job} (fine-tune it with --task m3p_{job}, or "
                        f"with the {job} objective)")
