"""Supervised fine-tuning data: Alpaca records -> tokenized examples -> batches.

1. ``load_training_records``: read the records (Alpaca JSON/JSONL, OpenAI ``messages``, ShareGPT
   ``conversations``, parquet, a ``datasets`` dir) as Alpaca records, or conversations for ``chat``,
   and check their fields (one DataError line naming the file and the record).
2. ``tokenize_examples``: Alpaca prompt + response + EOS, tokenized together as Alpaca's train.py
   does. Only response tokens (and the EOS) are learned; prompt labels are -100. Examples longer
   than ``max_length`` are cut on the right and counted; one whose prompt alone fills
   ``max_length``, or whose output is empty, has nothing to learn and is dropped and counted.
3. ``ResumableBatchSampler``: which examples form each micro-batch. Shuffled per epoch from the
   seed; optionally grouped by length (little padding) or packed (no padding); sharded over ranks
   so that each optimizer step trains on the same rows whatever the number of ranks, and every
   example once per epoch; and stateful: ``ResumableDataLoader`` exposes its position as ``state_dict``, which Lightning
   saves in every checkpoint and restores on resume, so a resumed run continues at the same batch.
4. ``collate_rows``: tensors for the model. A sampler "row" is one example (padded batch) or
   several examples packed into one sequence. Packed rows get position ids that restart at 0 for
   each example and no attention mask: transformers then builds a block-diagonal causal mask from
   the position ids (sdpa/eager, ``masking_utils.find_packed_sequence_indices``) or runs varlen
   flash attention, so no token attends across an example boundary.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.utils.checkpoint
from torch.utils.data import DataLoader, Dataset, Sampler

from alpacare.data.jsonl import read_records
from alpacare.errors import DataError
from alpacare.prompts.alpaca import format_prompt
from alpacare.prompts.chat import chat_prompt, end_of_turn_id, user_content

IGNORE_INDEX = -100  # labels the loss skips (torch.nn.CrossEntropyLoss default ignore_index)


# ---------------------------------------------------------------------------------------------
# Records and tokenization
# ---------------------------------------------------------------------------------------------


def load_alpaca_records(path: str | Path) -> list[dict[str, Any]]:
    """Alpaca records ({instruction, input, output}) with their fields checked."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no training examples (empty file)")
    for i, record in enumerate(records, 1):
        check_alpaca_record(record, f"{path}: record {i}")
    return records


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_training_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a training file: Alpaca JSON/JSONL (alpacare/data/jsonl.py), a ``.parquet`` file or a
    local Hugging Face ``datasets`` directory (``save_to_disk``; a DatasetDict's ``train`` split)."""
    path = Path(path)
    if not (path.is_dir() or path.suffix == ".parquet"):
        return read_records(path)
    import datasets

    try:
        data = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{path}: cannot read it as a datasets directory or parquet file ({str(e).splitlines()[0]})") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {sorted(data)})")
        data = data["train"]
    return data.to_list()


def conversation_of(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """OpenAI ``messages`` or ShareGPT ``conversations`` as [{role, content}], checked: an optional
    system message, then user/assistant turns alternating, ending with the assistant."""
    sharegpt = "messages" not in record
    turns = record["conversations"] if sharegpt else record["messages"]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: {'conversations' if sharegpt else 'messages'} must be a non-empty list")
    messages = []
    for k, turn in enumerate(turns, 1):
        role = SHAREGPT_ROLES.get(turn.get("from")) if sharegpt and isinstance(turn, dict) else (
            turn.get("role") if isinstance(turn, dict) else None)
        content = (turn.get("value") if sharegpt else turn.get("content")) if isinstance(turn, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise DataError(f"{where}: turn {k} needs a role (system/user/assistant; ShareGPT: system/human/gpt) "
                            "and a string content")
        messages.append({"role": role, "content": content})
    body = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * (len(body) // 2)
    if len(body) < 2 or len(body) % 2 or [m["role"] for m in body] != expected:
        raise DataError(f"{where}: turns must alternate user/assistant (after an optional system) and end with the assistant")
    return messages


def load_training_records(path: str | Path, template: str = "alpaca") -> list[dict[str, Any]]:
    """Training records from any supported format, as Alpaca records ({instruction, input, output})
    where they are one user turn and one answer, else (``chat`` only) ``{"messages": [...]}``.

    A conversation with a system message or several turns cannot be written in the Alpaca
    template: with ``alpaca`` it is an error naming the record, with ``chat`` it is rendered by the
    template, earlier turns as context and the loss on the final assistant turn."""
    rows = read_training_rows(path)
    if not rows:
        raise DataError(f"{path}: no training examples (empty file)")
    records, alpaca = [], []
    for i, row in enumerate(rows, 1):
        if isinstance(row, dict) and ("messages" in row or "conversations" in row):
            messages = conversation_of(row, f"{path}: record {i}")
            if len(messages) == 2:
                records.append({"instruction": messages[0]["content"], "input": "", "output": messages[1]["content"]})
                continue
            if template != "chat":
                raise DataError(f"{path}: record {i}: a system message or several turns need train.template=chat")
            records.append({"messages": messages})
        else:
            records.append(row)
            alpaca.append((i, row))
    for i, record in alpaca:
        check_alpaca_record(record, f"{path}: record {i}")
    return records


def check_alpaca_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: not an object with instruction/output (or messages/conversations)")
    for key in ("instruction", "output"):
        if key not in record:
            raise DataError(f"{where} is missing the field {key!r}")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    if not record["instruction"].strip():
        raise DataError(f"{where}: 'instruction' is empty")
    if record.get("input") is not None and not isinstance(record["input"], str):
        raise DataError(f"{where}: 'input' must be a string, got {type(record['input']).__name__}")


def response_of(record: dict[str, Any]) -> str:
    return record["messages"][-1]["content"] if "messages" in record else record["output"]


def chat_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record's conversation before the learned answer (``chat``)."""
    if "messages" in record:
        return record["messages"][:-1]
    return [{"role": "user", "content": user_content(record["instruction"], record.get("input"))}]


def split_validation(records: Sequence[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out) records: a record is held out when the hash of (seed, its content) falls
    below ``fraction``, so its side never depends on the other records or their order (adding data
    reshuffles nothing; identical records land together)."""
    def held_out(record: dict[str, Any]) -> bool:
        text = json.dumps([seed, record], sort_keys=True, ensure_ascii=False)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") < fraction * 2**64

    train, val = [], []
    for record in records:
        (val if held_out(record) else train).append(record)
    return train, val


@dataclass
class Example:
    """One tokenized example: prompt tokens then response tokens (ending in EOS unless truncated)."""

    input_ids: torch.Tensor  # int64, shape [length]
    prompt_length: int

    def __len__(self) -> int:
        return self.input_ids.numel()

    @property
    def labels(self) -> torch.Tensor:
        labels = self.input_ids.clone()
        labels[: self.prompt_length] = IGNORE_INDEX
        return labels


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0  # cut to max_length (the tail of the response, and its EOS, are lost)
    dropped: int = 0  # prompt alone >= max_length: no response token left to learn
    empty_outputs: int = 0  # output empty or blank: nothing to learn but EOS; dropped
    # Prompt and response tokenized together merged across the boundary (the prompt's tokens are
    # not a prefix of the pair's): labels start after the tokens the two share.
    boundary_merged: int = 0
    tokens: int = 0


def tokenize_examples(records: Sequence[dict[str, Any]], tokenizer, max_length: int,
                      template: str = "alpaca") -> tuple[list[Example], TokenizeStats]:
    """Prompt and response are tokenized together, as Alpaca's train.py (which AlpaCare runs) does,
    and the prompt alone gives where the labels start.

    Tokenizing the response on its own would make it start with a word-initial token: with the
    SentencePiece tokenizer of LLaMA-1/2, "The" alone is "▁The", but right after "### Response:"
    it is "The". The model would learn a first token that the joint text, and the inference
    prompt, never lead to. Jointly, the prompt's tokens are those the model sees at inference
    (``tokenizer(format_prompt(...))``), and the labels are the tokens that follow them in the
    pair (tests/test_fidelity.py checks both on a SentencePiece LLaMA tokenizer).

    ``template="chat"``: the prompt is the tokenizer's chat template up to the assistant turn
    (alpacare/prompts/chat.py), which writes its own special tokens (no others are added), and the
    response ends with the template's end-of-turn token instead of EOS."""
    kept = [r for r in records if response_of(r).strip()]
    stats = TokenizeStats(empty_outputs=len(records) - len(kept))
    chat = template == "chat"
    if chat:
        prompts = [chat_prompt(tokenizer, chat_messages(r)) for r in kept]
    else:
        prompts = [format_prompt(r["instruction"], r.get("input")) for r in kept]
    end_id = end_of_turn_id(tokenizer) if chat else tokenizer.eos_token_id
    prompt_ids = tokenizer(prompts, add_special_tokens=not chat)["input_ids"] if kept else []
    pair_ids = tokenizer([p + response_of(r) for p, r in zip(prompts, kept)], add_special_tokens=not chat)["input_ids"] if kept else []

    examples = []
    for prompt, pair in zip(prompt_ids, pair_ids):
        if pair[: len(prompt)] != prompt:
            stats.boundary_merged += 1
            shared = next((i for i, (a, b) in enumerate(zip(prompt, pair)) if a != b), min(len(prompt), len(pair)))
            prompt = prompt[:shared]
        ids = pair + [end_id]
        if len(ids) > max_length:
            stats.truncated += 1
            if len(prompt) >= max_length:
                stats.dropped += 1
                continue
            ids = ids[:max_length]
        examples.append(Example(torch.tensor(ids, dtype=torch.long), len(prompt)))
        stats.tokens += len(ids)
    stats.examples = len(examples)
    return examples, stats


def data_digest(path: str | Path) -> str:
    """Content hash of the training data: a file, or every file of a ``datasets`` directory."""
    from alpacare.fingerprint import file_digest

    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path)}\0{file_digest(f)}\0".encode())
    return "sha256:" + digest.hexdigest()[:16]


def data_fingerprint(path: str | Path, max_length: int, template: str = "alpaca") -> str:
    """Identifies the training data, so a resumed run refuses a checkpoint made on other data."""
    digest = hashlib.sha256(data_digest(path).encode()) if Path(path).is_dir() else hashlib.sha256(Path(path).read_bytes())
    digest.update(f"max_length={max_length}".encode())
    if template != "alpaca":  # the default's fingerprint stays what it was
        digest.update(f"template={template}".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Which examples go together: length grouping, packing, resumable order
# ---------------------------------------------------------------------------------------------


def pack_rows(lengths: Sequence[int], capacity: int) -> list[tuple[int, ...]]:
    """Best-fit-decreasing bin packing of examples into rows of at most ``capacity`` tokens.

    Deterministic in ``lengths`` alone, so every epoch (and a resumed run) has the same rows and
    the same number of steps; epochs differ in the order of the rows.
    """
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row id), sorted: bisect finds the best fit
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[i]
        k = bisect.bisect_left(free, (need, -1))
        if k < len(free):
            space, row = free.pop(k)
        else:
            space, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        if space - need > 0:
            bisect.insort(free, (space - need, row))
    return [tuple(r) for r in rows]


class ResumableBatchSampler(Sampler):
    """Yields this rank's micro-batches, as lists of rows (tuples of example indices).

    An epoch is a list of optimizer steps, each a set of rows, that depends on the seed, the epoch
    and the effective batch only, never on how many ranks share it: one process accumulating 4
    micro-batches and 4 processes with one each train on the same rows at every step, and every row
    is trained on exactly once per epoch (the last step is smaller when the rows do not divide).

    Each epoch shuffles the rows with ``seed + epoch``. With ``group_by_length``, rows are sorted by
    length within random megabatches of 50 optimizer steps (HF Trainer's LengthGroupedSampler sorts
    within 50 batches), so a step pads little while the order of the steps stays random. A step's
    rows are dealt to micro-batches in length order, micro-batch ``a`` of every rank from
    consecutive rows, so all ranks compute similar lengths at the same moment.
    """

    MEGABATCH_FACTOR = 50  # HF LengthGroupedSampler's default

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        group_by_length: bool = True,
        pack_to: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
        learned: Optional[Sequence[int]] = None,
        accumulate: int = 1,
    ):
        self.rows = pack_rows(lengths, pack_to) if pack_to else [(i,) for i in range(len(lengths))]
        # Response tokens per row, to tell each micro-batch how many its optimizer step learns.
        self.row_learned = [sum(learned[i] for i in row) for row in self.rows] if learned is not None else None
        self.accumulate = accumulate
        self.row_lengths = [sum(lengths[i] for i in row) for row in self.rows]
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.rank = rank
        self.world_size = world_size
        self.step_rows = batch_size * world_size * accumulate  # rows per optimizer step, all ranks
        self.epoch = 0
        self.batches_done = 0  # micro-batches of this epoch handed out so far
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` micro-batches of ``epoch`` (already trained on)."""
        self._resume = (epoch, batches_done)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_at(state["epoch"], state["batches_done"])

    def __len__(self) -> int:
        """Micro-batches per rank and epoch, the same on every rank."""
        full, rest = divmod(len(self.rows), self.step_rows)
        return full * self.accumulate + math.ceil(rest / (self.batch_size * self.world_size))

    def steps(self) -> list[list[int]]:
        """This epoch's optimizer steps, as lists of row ids (all ranks), in length order within a
        step when grouping. The same for every world size with the same effective batch."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.rows), generator=generator).tolist()
        if self.group_by_length:
            mega = self.step_rows * self.MEGABATCH_FACTOR
            order = [
                row
                for start in range(0, len(order), mega)
                for row in sorted(order[start : start + mega], key=lambda r: -self.row_lengths[r])
            ]
        steps = [order[i : i + self.step_rows] for i in range(0, len(order), self.step_rows)]
        if self.group_by_length:  # sorted megabatches would otherwise run long-to-short in order
            # A smaller last step stays last: Lightning counts accumulation from the epoch's start.
            full = len(order) // self.step_rows
            steps = [steps[i] for i in torch.randperm(full, generator=generator).tolist()] + steps[full:]
        return steps

    def micro_batches(self, step: list[int]) -> list[list[list[int]]]:
        """A step's rows dealt to ``[micro-batch][rank]`` slots of at most ``batch_size`` rows, sizes
        differing by one at most. A full step fills every slot; the epoch's last step uses fewer
        micro-batches, and a slot left empty (fewer rows than ranks) is an empty list."""
        per_micro = self.batch_size * self.world_size
        count = self.accumulate if len(step) == self.step_rows else math.ceil(len(step) / per_micro)
        slots = count * self.world_size
        size, extra = divmod(len(step), slots)
        bounds = [0]
        for s in range(slots):
            bounds.append(bounds[-1] + size + (s < extra))
        return [[step[bounds[a * self.world_size + r] : bounds[a * self.world_size + r + 1]]
                 for r in range(self.world_size)] for a in range(count)]

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        self.batches_done = skip
        k = 0
        for step in self.steps():
            step_tokens = sum(self.row_learned[r] for r in step) if self.row_learned is not None else None
            for slots in self.micro_batches(step):
                k += 1
                if k <= skip:
                    continue
                self.batches_done += 1
                mine = slots[self.rank]
                if not mine:  # this rank has no row left in the epoch's last step: it computes a
                    # placeholder (the step's first row) whose loss counts zero, as DDP needs every rank
                    yield [Row(self.rows[step[0]], step_tokens, masked=True)]
                elif step_tokens is None:
                    yield [self.rows[r] for r in mine]
                else:
                    yield [Row(self.rows[r], step_tokens) for r in mine]


class Row(tuple):
    """A row of example indices that also carries its optimizer step's response-token count, and
    whether it is a placeholder whose loss counts zero (``ResumableBatchSampler``)."""

    def __new__(cls, indices: Sequence[int], step_tokens: Optional[int], masked: bool = False):
        row = super().__new__(cls, indices)
        row.step_tokens = step_tokens
        row.masked = masked
        return row


class RowExamples(list):
    """A row's examples, with the step's response-token count and the placeholder flag (``Row``)."""

    step_tokens: Optional[int] = None
    masked: bool = False


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable: it saves ``state_dict()`` (the sampler's
    epoch and batches handed out) in each checkpoint and calls ``load_state_dict`` on resume.

    The count is exact because nothing reads ahead: no worker processes, and Lightning does not
    prefetch from loaders with a length.
    """

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class ExampleRows(Dataset):
    """Indexed by a row (tuple of example ids); returns its examples. Used with ResumableBatchSampler."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, row: tuple[int, ...]) -> list[Example]:
        examples = RowExamples(self.examples[i] for i in row)
        examples.step_tokens = getattr(row, "step_tokens", None)
        examples.masked = getattr(row, "masked", False)
        return examples


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def collate_rows(rows: Sequence[Sequence[Example]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors, one line per row.

    Single-example rows get the usual ``attention_mask``. Packed rows get ``position_ids`` that
    restart at 0 for every example (the padding tail counts as one more sequence), which is what
    makes transformers keep attention block-diagonal; an attention mask would disable that.
    """
    width = max(sum(len(e) for e in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for example in row:
            end = start + len(example)
            input_ids[b, start:end] = example.input_ids
            labels[b, start:end] = example.labels
            position_ids[b, start:end] = torch.arange(len(example))
            attention_mask[b, start:end] = 1
            start = end
        position_ids[b, start:] = torch.arange(width - start)
    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "num_tokens": int(attention_mask.sum()),  # useful (non-pad) tokens, for tokens/s
        "num_examples": sum(len(row) for row in rows),
    }
    step_tokens = getattr(rows[0], "step_tokens", None) if rows else None
    if step_tokens is not None:  # response tokens of this micro-batch's whole optimizer step
        batch["step_tokens"] = step_tokens
    if rows and getattr(rows[0], "masked", False):  # a placeholder: computed, counted nowhere
        batch.update(masked=True, num_tokens=0, num_examples=0)
    if any(len(row) > 1 for row in rows):
        batch["position_ids"] = position_ids
    else:
        batch["attention_mask"] = attention_mask
    return batch


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

LOSS_CHUNK_TOKENS = 1024  # logits of at most this many tokens exist at once (~200 MB at 49k vocab)


def learned_tokens(example: Example) -> int:
    """Tokens the loss learns in ``example``: the response and EOS (the first token is never a target)."""
    return len(example) - max(example.prompt_length, 1)


def step_loss(loss_sum: torch.Tensor, step_tokens: int, accumulate: int, world_size: int) -> torch.Tensor:
    """A micro-batch's share of the optimizer step's loss: its summed token losses over the response
    tokens of the whole step (all micro-batches, all ranks), as transformers normalizes since 4.46.

    Lightning divides what training_step returns by ``accumulate`` and DDP/FSDP average gradients
    over ranks; both are undone here, so the step's gradient is that of the mean over every
    response token of the step, whatever the batching (random, length-grouped or packed)."""
    return loss_sum * (accumulate * world_size / max(step_tokens, 1))


def response_loss(model, batch: dict[str, Any], reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the response tokens: the same value as the model's own
    ``labels=`` loss (mean over labels != -100), computed without the full logits tensor
    (``reduction="sum"``: the sum, for ``step_loss``).

    The output layer runs only on positions whose next token is learned (the response, not the
    prompt or padding), in chunks whose logits are recomputed in backward instead of stored.
    With a 49k vocabulary that layer is about a fifth of a 135M model's compute, and its
    [batch, length, vocab] float logits plus their gradient were the largest tensors of a step.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps it
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,  # with a KV cache, transformers would ignore packed position ids
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    learned = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][learned], targets[learned]
    head = base.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden.split(LOSS_CHUNK_TOKENS), targets.split(LOSS_CHUNK_TOKENS)):
        total = total + torch.utils.checkpoint.checkpoint(_cross_entropy_sum, head, h, y, use_reentrant=False)
    return total if reduction == "sum" else total / targets.numel()


def _cross_entropy_sum(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")
