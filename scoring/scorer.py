"""ONNX Runtime scorer: (query, product text) pairs in, relevance probabilities out.

Two tiers share one model directory (``tier``):

- ``"cross-encoder"``: the fine-tuned MiniLM-L6 cross-encoder reads each pair jointly.
- ``"cosine"``: the base model's own embeddings (:mod:`scoring.embedding`): the cosine of the
  query's and the product text's vectors, each computed once and cached, mapped to
  ``(cos + 1) / 2``. On real labels it ranks better than today's fine-tuned student (README,
  "Model quality"), so the build marks it as the served tier.
- ``"page"``: a result judged against its result page (:mod:`scoring.page`): the cosine, the
  product's cosine to the page's most query-like results, the page's share in its category, the
  page's size, and the cosine of the query and the title's head where the title names what the
  product is for, combined by a logistic model fitted on real labels. Only results that come
  with their page (:meth:`Scorer.predict`'s ``pages``) are scored so, with the version and
  operating point of :attr:`Scorer.page`. A result that arrives alone is scored by the page
  tier's *lone* model (:attr:`Scorer.lone`: the features that need no page), whose version and
  operating point are the scorer's own (:attr:`Scorer.model_version`,
  :attr:`Scorer.operating_threshold`); with a card that has none, by the cosine tier.
- ``"card"``: the tier the model card serves (:attr:`ModelCard.served_tier
  <scoring.card.ModelCard.served_tier>`).

Each tier has its own calibration and operating point in the card (:meth:`ModelCard.tier
<scoring.card.ModelCard.tier>`).

Provider choice (``provider``):

- ``"cpu"``: CPUExecutionProvider only.
- ``"cuda"``: CUDAExecutionProvider, and nothing else will do: if the session does not really
  run on CUDA (onnxruntime-gpu silently falls back to CPU when the CUDA 13 / cuDNN 9 libraries
  or the GPU are missing), :class:`~relmon.errors.ConfigError` is raised.
- ``"auto"``: CUDA where it really works, CPU otherwise (the fallback is logged at INFO).

``variant="auto"`` picks ``model.int8.onnx`` on CPU (unless the model card's
``cpu_default_variant`` says ``fp32``: the build writes that when int8 loses too much AUC) and
``model.onnx`` (fp32) on CUDA. On CPU the cross-encoder then times int8 against fp32 on this
host at start-up and serves fp32 if it is clearly faster (int8 gains little without VNNI; see
:meth:`Scorer._fastest_cpu_variant`); the speeds are in :attr:`Scorer.variant_speeds`. The
cosine and page tiers embed with ``embed.int8.onnx`` on CPU and ``embed.onnx`` (fp32) on CUDA
(:meth:`Scorer._pick_embedder`); a non-fp32 file adds its variant to the tier's version.
:attr:`Scorer.provider` is what ``session.get_providers()`` reports, never what was asked for.

Determinism: a pair's score depends on the pair only, never on its batch-mates, the batch size
or the padding. The int8 model scales each token's activations by that token's own largest value
(:func:`scoring.training.export.quantise_per_token`; weights per channel), so no scale is
computed over a batch; each row of every kernel is computed independently of the others.
``tests/unit/test_scorer.py`` checks that scores are bitwise equal across batch compositions,
orders and sizes.
That is what lets a replay after a crash reproduce the same scores and rates.

Speed: pairs are tokenised without padding, sorted by length in chunks, and each batch is padded
only to its own longest pair; the next chunk is tokenised in a thread while the current one runs.
On CPU a batch holds at most :data:`TOKEN_BUDGET` tokens (rows x its padded length), and the
batches run on ``threads`` threads at once, one onnxruntime thread each, rather than one batch at
a time across all of them: a transformer on short inputs is a long chain of small operators, and
each operator split over the cores waits for the slowest (``bench/scoring.py``; README,
"Scoring performance"). A pair's score does not depend on its batch, so neither choice changes
a score.
A bounded LRU cache (the head-query tier) keyed by (model version, query, product id, title)
answers repeated pairs without inference; :meth:`Scorer.stats` reports its hits and misses.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from relmon.errors import ConfigError, ModelNotFoundError
from scoring.card import ModelCard, TierCard
from scoring.embedding import (
    EMBED_FILE,
    EMBED_INT8_FILE,
    EMBED_MAX_LENGTH,
    EmbeddingCache,
    SharedVectors,
)
from scoring.page import (
    ANCHORS,
    FEATURES,
    LONE_COLUMNS,
    LONE_FEATURES,
    PageContext,
    PageModel,
    PageRef,
    negated_in_titles,
    page_features,
)
from scoring.text import title_head, title_of

__all__ = [
    "TOKEN_BUDGET",
    "Provider",
    "Scorer",
    "Tier",
    "Variant",
    "default_threads",
    "operating_threshold",
    "polarise",
]

log = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
Variant = Literal["auto", "int8", "fp32", "fp16"]
Tier = Literal["card", "cross-encoder", "cosine", "page"]
_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
_EMBED_FILES = {"fp32": EMBED_FILE, "int8": EMBED_INT8_FILE}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


TOKEN_BUDGET = 512
"""most tokens (rows x padded length) in one CPU batch; measured best between 384 and 640 for
both the cross-encoder and the embedder, on short and on real-length text (README, "Scoring
performance"). 32 rows of real-length text (about 52 tokens a pair) made slower batches."""

SPEED_PAIRS = 64
"""pairs each CPU variant scores per round when ``variant="auto"`` times them at start-up"""
SPEED_ROUNDS = 2
SPEED_MARGIN = 0.1
"""fp32 replaces the card's int8 only when at least this much faster (more is noise)"""


_SPEED_TEXT = (
    "stainless steel insulated water bottle wide mouth leak proof lid keeps drinks cold "
    "for 24 hours brand hydro colour black category sports outdoors accessories"
)


def _speed_pairs() -> list[tuple[str, str]]:
    """Query/product pairs about as long as real ones (about 50 tokens), all distinct."""
    words = _SPEED_TEXT.split(" ")
    return [
        (f"bottle for hiking {i}", " ".join(words[i % len(words) :] + words[: i % len(words)]))
        for i in range(SPEED_PAIRS)
    ]


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def _cuda_loadable() -> bool:
    """Whether onnxruntime's CUDA provider library and its CUDA/cuDNN dependencies load."""
    if _CUDA not in ort.get_available_providers():
        return False
    if importlib.util.find_spec("nvidia") is not None:  # the [cuda,cudnn] extras' wheels
        try:
            ort.preload_dlls()
        except Exception as exc:  # best effort: the probe below decides
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        log.debug("CUDA provider not loadable: %s", exc)
        return False
    return True


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)
    return out


def polarise(scores: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Walmart's sigmoid polarisation of probabilities: ``sigmoid(alpha * (s - beta))``."""
    return _sigmoid(alpha * (np.asarray(scores, dtype=np.float64) - beta))


def operating_threshold(
    card: ModelCard | TierCard | Mapping[str, Any], calibration: tuple[float, float] | None = None
) -> float:
    """The card's operating point (0.5 when the card has none), mapped through ``calibration``.

    The operating point is the raw-score threshold below which a result is flagged bad, chosen
    on real labels so that the flag is right at least 60% of the time with 95% confidence
    (``scoring.training.evaluate.operating_point``); a calibrated scorer compares calibrated
    scores, so the threshold goes through the same function. ``card`` is a card or a tier of one, or
    ``card.json`` read as plain JSON (the cross-encoder's point, at its top level).
    """
    typed = ModelCard.from_json(card) if isinstance(card, Mapping) else card
    if typed.operating_point is None:
        return 0.5
    raw = np.array([typed.operating_point.threshold])
    if calibration is not None:
        raw = polarise(raw, *calibration)
    return float(raw[0])


CacheKey = tuple[str, Hashable, str]


@dataclass(frozen=True)
class PageTier:
    """A page tier's card entry as the scorer uses it: version, operating point, model.

    The page model (card tier ``"page"``) or the lone model (``"lone"``, :data:`LONE_FEATURES`).
    """

    model_version: str
    operating_threshold: float
    """P(good) below which a result is flagged bad (the flag's precision target, as above)"""
    model: PageModel

    @classmethod
    def of(cls, entry: TierCard, lone: bool = False) -> PageTier:
        """The tier of a card entry: the page model's, or with ``lone`` the lone model's.

        Raises:
            ModelNotFoundError: the entry lacks its model or operating point (rebuild).

        """
        name = "lone" if lone else "page"
        if entry.page_model is None or entry.operating_point is None:
            raise ModelNotFoundError(
                f"the model card's {name} tier has no model or operating point: rebuild the "
                "model (relmon model build)"
            )
        m = entry.page_model
        features, anchors = (LONE_FEATURES, 0) if lone else (FEATURES, ANCHORS)
        if tuple(m.features) != features or m.anchors != anchors:
            raise ModelNotFoundError(
                f"the model card's {name} tier reads features {m.features} with {m.anchors} "
                f"anchors; this relmon computes {list(features)} with {anchors}: rebuild the "
                "model (relmon model build)"
            )
        return cls(
            model_version=entry.model_version,
            operating_threshold=entry.operating_point.threshold,
            model=PageModel(
                mean=tuple(m.mean),
                std=tuple(m.std),
                weights=tuple(m.weights),
                bias=m.bias,
                features=features,
            ),
        )


class Scorer:
    """Score (query, title) pairs with the ONNX cross-encoder built by ``build_model``.

    Args:
        model_dir: directory holding ``model.onnx`` and/or ``model.int8.onnx``, the tokenizer
            files and ``card.json``.
        provider: ``"auto"`` (CUDA where it really works, else CPU), ``"cuda"`` (raise
            ``ConfigError`` unless CUDA is really active) or ``"cpu"``.
        variant: ``"int8"``, ``"fp32"``, ``"fp16"`` (CUDA only) or ``"auto"`` (int8 on CPU
            unless the card says fp32; fp16 on CUDA when ``model.fp16.onnx`` exists, else fp32).
        threads: CPU threads scoring uses; 0 = the cores this process may use. On CPU, that many
            batches run at once, one onnxruntime thread each; on CUDA, onnxruntime's intra-op
            threads for the operators left on the CPU.
        max_length: pairs are truncated to this many tokens (longest side first).
        device_id: CUDA device.
        cache_size: entries of the LRU score cache (0 = no cache).
        calibration: ``None`` (raw probabilities), ``"card"`` (the polarisation alpha/beta
            fitted at build time, from ``card.json``) or ``(alpha, beta)``: scores become
            ``sigmoid(alpha * (p - beta))``. The model version then ends in ``-cal``.
        tier: ``"cross-encoder"``, ``"cosine"`` or ``"card"`` (the card's served tier).

    Raises:
        ModelNotFoundError: the directory or one of its files is missing.
        ConfigError: ``provider="cuda"`` but the session does not run on CUDA.

    """

    def __init__(
        self,
        model_dir: Path | str,
        provider: Provider = "auto",
        variant: Variant = "auto",
        threads: int = 0,
        max_length: int = 64,
        *,
        device_id: int = 0,
        cache_size: int = 0,
        calibration: tuple[float, float] | Literal["card"] | None = None,
        tier: Tier = "cross-encoder",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_length = max_length
        self._device_id = device_id
        self.threads = threads or default_threads()
        card = self._check_files(variant)
        self.card: ModelCard = card
        resolved = (card.served_tier or "cross-encoder") if tier == "card" else tier
        if resolved not in ("cross-encoder", "cosine", "page"):
            raise ConfigError(f"unknown scorer tier {resolved!r}: cross-encoder, cosine or page")
        self.tier: Literal["cross-encoder", "cosine", "page"] = resolved  # type: ignore[assignment]
        # the page tier embeds as the cosine tier does; a result that arrives alone gets its
        # lone model, or the cosine tier with a card that has none
        self._single = "cross-encoder" if resolved == "cross-encoder" else "cosine"
        self._tier_card = card.tier(self._single)
        self.page: PageTier | None = None
        self.lone: PageTier | None = None
        """the page tier's model of results that arrive alone (None: the cosine tier's score)"""
        if resolved == "page":
            self.page = PageTier.of(card.tier("page"))
            if "lone" in (card.tiers or {}):
                self._tier_card = card.tier("lone")
                self.lone = PageTier.of(self._tier_card, lone=True)
        if self._single == "cosine" and not (self.model_dir / EMBED_FILE).is_file():
            raise ModelNotFoundError(
                f"{EMBED_FILE} missing in {self.model_dir}: run `relmon model build` to build it"
            )
        want_cuda = provider == "cuda" or (provider == "auto" and _cuda_loadable())
        cpu_default: Literal["int8", "fp32"] = (
            "fp32" if card.cpu_default_variant == "fp32" else "int8"
        )
        chosen = self._pick(variant, want_cuda, cpu_default)
        self._session = self._open(chosen, want_cuda, device_id)
        self.provider: str = self._session.get_providers()[0]
        if want_cuda and self.provider != _CUDA:
            if provider == "cuda":
                raise ConfigError(
                    f"provider='cuda' but onnxruntime runs this model on {self.provider}: CUDA 13 "
                    "/ cuDNN 9 or the GPU is missing (install relmon[cuda] on a GPU host), or use "
                    "provider='auto' or 'cpu'"
                )
            log.info("CUDA did not initialise; scoring on %s", self.provider)
            on_cpu = self._pick(variant, False, cpu_default)
            if variant == "auto" and chosen != on_cpu:
                chosen = on_cpu
            self._session = self._open(chosen, False, device_id)  # one thread per batch
            self.provider = self._session.get_providers()[0]
        self._tokenizer = self._load_tokenizer()
        self._pad_id = int(self._tokenizer.token_to_id("[PAD]") or 0)
        self._inputs = {i.name for i in self._session.get_inputs()}
        cpu = self.provider != _CUDA
        self._streams = self.threads if cpu else 1
        self._budget = TOKEN_BUDGET if cpu else math.inf
        self._run_pool = (
            ThreadPoolExecutor(self._streams, thread_name_prefix="relmon-score")
            if self._streams > 1
            else None
        )
        self.variant_speeds: dict[str, float] = {}
        """pairs/s of each CPU variant, timed at start-up when ``variant="auto"`` had a choice"""
        if (
            variant == "auto"
            and self.provider != _CUDA
            and self._single == "cross-encoder"
            and chosen == "int8"
            and (self.model_dir / _FILES["fp32"]).is_file()
        ):
            chosen = self._fastest_cpu_variant()
        self.variant: Literal["int8", "fp32", "fp16"] = chosen
        # int8/fp16 scores differ slightly from fp32: the variant is part of the row's version
        base = self._tier_card.model_version
        version = base if chosen == "fp32" else f"{base}-{chosen}"
        digest = (card.sha256 or {}).get(self._file(chosen))
        if chosen != "fp32" and digest:  # a re-quantised file gets a version of its own
            version = f"{version}.{digest[:8]}"
        if self.page is not None and chosen != "fp32":  # the page tier reads these embeddings
            suffix = version.removeprefix(base)
            self.page = replace(self.page, model_version=self.page.model_version + suffix)
        if self.lone is not None:
            self.lone = replace(self.lone, model_version=version)
        self.calibration: tuple[float, float] | None = (
            None  # the lone model gives P(good) itself
            if self.lone is not None
            else self._calibration(calibration, self._tier_card)
        )
        self.model_version: str = f"{version}-cal" if self.calibration else version
        self.session_providers: list[str] = list(self._session.get_providers())
        """onnxruntime's providers of the session, in its order of preference"""
        self._output = self._session.get_outputs()[0].name
        self._cache_size = max(0, cache_size)
        self._cache: OrderedDict[CacheKey, float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        self._tok_pool = ThreadPoolExecutor(1, thread_name_prefix="relmon-tokenise")
        self._embeddings: EmbeddingCache | None = None
        if self._single == "cosine":
            self._embeddings = EmbeddingCache(
                self.model_dir / "tokenizer.json", self._run_each, self._feeds
            )

    @staticmethod
    def _calibration(
        value: tuple[float, float] | Literal["card"] | None, tier: TierCard
    ) -> tuple[float, float] | None:
        if value is None:
            return None
        if value == "card":
            if tier.calibration is None:
                raise ConfigError("calibration='card' but card.json has no fitted alpha/beta")
            return tier.calibration.alpha, tier.calibration.beta
        alpha, beta = value
        return float(alpha), float(beta)

    @property
    def operating_threshold(self) -> float:
        """The tier's operating point on this scorer's scale (see :func:`operating_threshold`)."""
        return operating_threshold(self._tier_card, self.calibration)

    def _pick(
        self, variant: Variant, cuda: bool, cpu_default: Literal["int8", "fp32"]
    ) -> Literal["int8", "fp32", "fp16"]:
        """The variant to serve; on cosine and page the embedder's (:meth:`_pick_embedder`)."""
        if self._single == "cosine":
            return self._pick_embedder(variant, cuda)
        if variant != "auto":
            return variant
        if cuda:  # fp16 on the GPU when built, else fp32
            prefs: list[Literal["int8", "fp32", "fp16"]] = ["fp16", "fp32", "int8"]
        else:
            prefs = [cpu_default, "fp32" if cpu_default == "int8" else "int8"]
        return next(v for v in prefs if (self.model_dir / _FILES[v]).is_file())

    def _check_files(self, variant: Variant) -> ModelCard:
        hint = "run `relmon model build` to build it"
        d = self.model_dir
        if not d.is_dir():
            raise ModelNotFoundError(f"no model directory at {d}: {hint}")
        wanted = [_FILES[variant]] if variant != "auto" else [_FILES["int8"], _FILES["fp32"]]
        if not any((d / f).is_file() for f in wanted):
            raise ModelNotFoundError(f"{' or '.join(wanted)} missing in {d}: {hint}")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if not (d / name).is_file():
                raise ModelNotFoundError(f"{name} missing in {d}: {hint}")
        return ModelCard.load(d)

    def _open(self, variant: str, cuda: bool, device_id: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        # CPU: batches run side by side, one thread each (_run_each); CUDA: one at a time
        opts.intra_op_num_threads = self.threads if cuda else 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = [_CPU]
        if cuda:
            cuda_opts = {
                "device_id": device_id,
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
                "do_copy_in_default_stream": True,
            }
            providers = [(_CUDA, cuda_opts), _CPU]
        path = str(self.model_dir / self._file(variant))
        return ort.InferenceSession(path, sess_options=opts, providers=providers)

    def _file(self, variant: str) -> str:
        """The ONNX file of ``variant`` on this scorer's tier (the embedder on cosine and page)."""
        return _EMBED_FILES[variant] if self._single == "cosine" else _FILES[variant]

    def _pick_embedder(self, variant: Variant, cuda: bool) -> Literal["int8", "fp32"]:
        """The embedder's variant: int8 on CPU when built, fp32 on CUDA (there is no fp16 one).

        Not chosen by a timing, as the cross-encoder's is: the cosine and page tiers are fitted
        on the int8 embedder's vectors, so on CPU those are served whenever the file is there
        (``variant="fp32"`` asks for the other).
        """
        if variant == "int8":
            if not (self.model_dir / EMBED_INT8_FILE).is_file():
                raise ModelNotFoundError(
                    f"{EMBED_INT8_FILE} missing in {self.model_dir}: run `relmon model build`"
                )
            return "int8"
        if variant == "auto" and not cuda and (self.model_dir / EMBED_INT8_FILE).is_file():
            return "int8"
        return "fp32"

    def _fastest_cpu_variant(self) -> Literal["int8", "fp32"]:
        """Time int8 (open) against fp32 on this host; serve fp32 only if clearly faster.

        int8 is faster on CPUs with VNNI and about even without it (AVX2 only), so it is not
        assumed: both score :data:`SPEED_PAIRS` pairs of product-like text, alternately, and
        fp32 replaces int8 when it is :data:`SPEED_MARGIN` faster or more (int8 is the card's
        choice and keeps it within noise). The speeds are in :attr:`variant_speeds`.
        """
        sessions = {"int8": self._session, "fp32": self._open("fp32", False, 0)}
        feeds = [f for _, f in self._feeds(*self._encode(_speed_pairs()), 32)]
        best: dict[str, float] = {}
        for round_ in range(SPEED_ROUNDS + 1):
            for name, session in sessions.items():
                started = time.perf_counter()
                for _ in self._run_each(feeds, session):
                    pass
                if round_:  # the first round pays for lazy initialisation
                    seconds = time.perf_counter() - started
                    best[name] = min(best.get(name, math.inf), seconds)
        self.variant_speeds = {k: SPEED_PAIRS / v for k, v in best.items()}
        chosen: Literal["int8", "fp32"] = (
            "fp32"
            if self.variant_speeds["fp32"] > self.variant_speeds["int8"] * (1 + SPEED_MARGIN)
            else "int8"
        )
        log.info(
            "CPU variant by speed on this host: int8 %.0f pairs/s, fp32 %.0f: serving %s",
            self.variant_speeds["int8"],
            self.variant_speeds["fp32"],
            chosen,
        )
        self._session = sessions[chosen]
        return chosen

    def _load_tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(self.max_length, strategy="longest_first")
        return tok

    @property
    def embedder(self) -> str | None:
        """Who computes this scorer's embeddings, as a shared store keys them.

        The served embedder file's SHA-256 (``embed.int8.onnx`` or ``embed.onnx``; from the card,
        else the file) and the token cap; None on the cross-encoder tier, which embeds nothing.
        The two files' vectors differ slightly, so each has keys of its own.
        """
        if self._embeddings is None:
            return None
        name = self._file(self.variant)
        digest = (self.card.sha256 or {}).get(name)
        if not digest:
            with (self.model_dir / name).open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return f"minilm-embed-{digest[:16]}-l{EMBED_MAX_LENGTH}"

    def share_embeddings(self, shared: SharedVectors | None) -> None:
        """Ask ``shared`` for texts before embedding them, and give it what was embedded.

        The store must be keyed by :attr:`embedder` (:class:`streams.vectors.ClickHouseVectors`
        is). Nothing happens on the cross-encoder tier, which embeds nothing.
        """
        if self._embeddings is not None:
            self._embeddings.shared = shared

    def stats(self) -> dict[str, float]:
        """Cache counters: hits, misses, hit rate, entries and the size bound."""
        total = self.cache_hits + self.cache_misses
        out: dict[str, float] = {
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_hit_rate": self.cache_hits / total if total else 0.0,
            "cache_entries": len(self._cache),
            "cache_size": self._cache_size,
        }
        if self._embeddings is not None:
            e = self._embeddings
            out["embedding_cache_hits"] = e.hits
            out["embedding_cache_misses"] = e.misses
            out["embedding_cache_entries"] = len(e)
            out["embedding_shared_hits"] = e.shared_hits
            out["embedding_shared_errors"] = e.shared_errors
        return out

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 32,
        keys: Sequence[Hashable] | None = None,
        pages: Sequence[PageRef | None] | None = None,
    ) -> np.ndarray:
        """Return the relevance probability (sigmoid of the logit) of each pair, in order.

        ``keys`` (optional, one per pair, e.g. the product id) joins the query and the title in
        the cache key. Pairs are sorted by token length and batched so that each batch is padded
        only to its own longest pair; the scores come back in the input order. A pair's score
        does not depend on the other pairs of the call.

        ``pages`` (page tier only; one per pair or None): the page a result was shown on and its
        index there. Those results get the page tier's P(good) (:attr:`page`); the others the
        lone model's (:attr:`lone`) or, without one, the cosine tier's; every result on other
        tiers this tier's score.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if keys is not None and len(keys) != len(pairs):
            raise ValueError(f"{len(keys)} keys for {len(pairs)} pairs")
        if pages is not None and len(pages) != len(pairs):
            raise ValueError(f"{len(pages)} pages for {len(pairs)} pairs")
        on_page = (
            []
            if pages is None or self.page is None
            else [i for i, ref in enumerate(pages) if ref is not None]
        )
        if not on_page:
            return self._predict_alone(pairs, batch_size, keys)
        assert pages is not None
        alone = [i for i, ref in enumerate(pages) if ref is None]
        out = np.empty(len(pairs), dtype=np.float32)
        out[on_page] = self._predict_pages(
            [pairs[i][0] for i in on_page], [pages[i] for i in on_page], batch_size
        )
        if alone:
            out[alone] = self._predict_alone(
                [pairs[i] for i in alone],
                batch_size,
                None if keys is None else [keys[i] for i in alone],
            )
        return out

    def _predict_alone(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int,
        keys: Sequence[Hashable] | None,
    ) -> np.ndarray:
        """Scores of results without a page: the lone model's P(good), else this tier's score."""
        if self.lone is not None:
            if not pairs:
                return np.empty(0, dtype=np.float32)
            p_good = self.lone.model.p_good(self.lone_features(pairs, batch_size))
            return p_good.astype(np.float32)
        out = np.empty(len(pairs), dtype=np.float32)
        todo = list(range(len(pairs)))
        ckeys: list[CacheKey] = []
        if self._cache_size:
            ckeys = [(q, None if keys is None else keys[i], t) for i, (q, t) in enumerate(pairs)]
            todo = []
            with self._cache_lock:
                for i, k in enumerate(ckeys):
                    hit = self._cache.get(k)
                    if hit is None:
                        todo.append(i)
                    else:
                        self._cache.move_to_end(k)
                        out[i] = hit
                self.cache_hits += len(pairs) - len(todo)
                self.cache_misses += len(todo)
        if todo:
            fresh = self._infer([pairs[i] for i in todo], batch_size)
            out[todo] = fresh
            if self._cache_size:
                with self._cache_lock:
                    for i, score in zip(todo, fresh.tolist(), strict=True):
                        self._cache[ckeys[i]] = score
                        self._cache.move_to_end(ckeys[i])
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        if self.calibration is not None:
            out = polarise(out, *self.calibration)
        return out

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit vectors of texts from the base model (cosine and page tiers), cached per text."""
        if self._embeddings is None:
            raise ConfigError("the cross-encoder tier has no embeddings: use tier cosine or page")
        return self._embeddings.embed(texts, batch_size)

    def page_features(self, query: str, page: PageContext, batch_size: int = 32) -> np.ndarray:
        """The page tier's features (:data:`scoring.page.FEATURES`) of every result of ``page``."""
        heads = [h for h in page.heads if h is not None]
        vectors = self.embed([query, *page.texts, *heads], batch_size)
        vector = dict(zip([query, *page.texts, *heads], vectors, strict=True))
        return _page_features(vector, query, page)

    def lone_features(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """The lone model's features (:data:`scoring.page.LONE_FEATURES`) of (query, text) pairs.

        Each text is a :func:`scoring.text.product_text`; its title
        (:func:`scoring.text.title_of`) gives the title head and what it names. The features
        are the page tier's of a result that needs no page, so they are computed as those.
        """
        titles = [title_of(text) for _, text in pairs]
        heads = [title_head(t) for t in titles]
        wanted = [*(q for q, _ in pairs), *(t for _, t in pairs), *(h for h in heads if h)]
        texts = list(dict.fromkeys(wanted))
        vector = dict(zip(texts, self.embed(texts, batch_size), strict=True))
        columns = list(LONE_COLUMNS)
        out = np.empty((len(pairs), len(columns)))
        for i, ((query, text), title, head) in enumerate(zip(pairs, titles, heads, strict=True)):
            alone = PageContext((text,), ("",), (head,), (title,))
            out[i] = _page_features(vector, query, alone)[0, columns]
        return out

    def _predict_pages(
        self, queries: Sequence[str], refs: Sequence[PageRef | None], batch_size: int
    ) -> np.ndarray:
        """The page tier's P(good) of results with their pages (each page's features once)."""
        assert self.page is not None
        # every text of the call at once: one look in the shared store, one batched inference;
        # each page's features are then computed from these vectors
        on_pages = (t for ref in refs if ref for t in (*ref[0].texts, *ref[0].heads) if t)
        texts = list(dict.fromkeys([*queries, *on_pages]))
        vector = dict(zip(texts, self.embed(texts, batch_size), strict=True))
        features = np.empty((len(queries), len(FEATURES)))
        done: dict[tuple[int, str], np.ndarray] = {}  # ``refs`` keeps each keyed page alive
        for n, (query, ref) in enumerate(zip(queries, refs, strict=True)):
            assert ref is not None
            page, index = ref
            key = (id(page), query)
            if key not in done:
                done[key] = _page_features(vector, query, page)
            features[n] = done[key][index]
        return self.page.model.p_good(features).astype(np.float32)

    def _encode(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
        encs = self._tokenizer.encode_batch([(q, t) for q, t in pairs])
        return [e.ids for e in encs], [e.type_ids for e in encs]

    def _infer(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> np.ndarray:
        """Raw probabilities; chunk k+1 is tokenised in a thread while chunk k runs."""
        if self._embeddings is not None:
            texts = [*(q for q, _ in pairs), *(t for _, t in pairs)]
            vectors = self._embeddings.embed(texts, batch_size)
            queries, products = vectors[: len(pairs)], vectors[len(pairs) :]
            cos = np.clip((queries * products).sum(axis=1), -1.0, 1.0)
            return ((cos + 1.0) / 2.0).astype(np.float32)
        out = np.empty(len(pairs), dtype=np.float32)
        chunk = max(batch_size * 8, 256)
        starts = list(range(0, len(pairs), chunk))
        pending: Future[tuple[list[list[int]], list[list[int]]]] | None = None
        for n, start in enumerate(starts):
            enc = pending.result() if pending else self._encode(pairs[start : start + chunk])
            pending = None
            if n + 1 < len(starts):
                nxt = starts[n + 1]
                pending = self._tok_pool.submit(self._encode, pairs[nxt : nxt + chunk])
            batches = list(self._feeds(*enc, batch_size))
            logits = self._run_each(feed for _, feed in batches)
            for (idx, _), batch_logits in zip(batches, logits, strict=True):
                out[start + idx] = _sigmoid(batch_logits.reshape(len(idx), -1)[:, 0])
        return out

    def _run_each(
        self, feeds: Iterable[dict[str, np.ndarray]], session: ort.InferenceSession | None = None
    ) -> Iterator[np.ndarray]:
        """The output of each feed, in order; on CPU up to ``threads`` batches run at once."""
        if self._run_pool is None:
            for feed in feeds:
                yield self._run(feed, session)
            return
        pending: deque[Future[np.ndarray]] = deque()
        try:
            for feed in feeds:
                pending.append(self._run_pool.submit(self._run, feed, session))
                if len(pending) > 2 * self._streams:  # bounded: feeds may be a long generator
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the caller stopped early or a batch failed
                future.cancel()

    def _run(
        self, feed: dict[str, np.ndarray], session: ort.InferenceSession | None = None
    ) -> np.ndarray:
        if self.provider != _CUDA:
            return np.asarray((session or self._session).run(None, feed)[0])
        # CUDA: IO binding (onnxruntime docs, "Python API: IOBinding"): inputs are copied to the
        # device once and the output is allocated there, instead of per-node host copies.
        binding = self._session.io_binding()
        for name, arr in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self._output, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def _batches(
        self, pairs: Sequence[tuple[str, str]], batch_size: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield (input positions, model inputs) per length-sorted, dynamically padded batch."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not pairs:
            return
        yield from self._feeds(*self._encode(pairs), batch_size)

    def _feeds(
        self, ids: list[list[int]], types: list[list[int]], batch_size: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        lengths = [len(x) for x in ids]
        order = np.argsort(lengths, kind="stable")
        # at least one batch per thread when there are enough rows, so none of them idles
        rows = min(batch_size, max(1, -(-len(ids) // self._streams)))
        start = 0
        while start < len(ids):
            end = start + 1  # grow while rows x the (ascending) longest length fits the budget
            while (
                end < len(ids)
                and end - start < rows
                and (end + 1 - start) * lengths[order[end]] <= self._budget
            ):
                end += 1
            idx = order[start:end]
            start = end
            width = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            token_types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                k = len(ids[i])
                input_ids[row, :k] = ids[i]
                mask[row, :k] = 1
                token_types[row, :k] = types[i]
            feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}
            yield idx, {k: v for k, v in feed.items() if k in self._inputs}

    def __repr__(self) -> str:
        return (
            f"Scorer({str(self.model_dir)!r}, provider={self.provider!r}, "
            f"variant={self.variant!r}, tier={self.tier!r}, model_version={self.model_version!r})"
        )


def _page_features(vector: dict[str, np.ndarray], query: str, page: PageContext) -> np.ndarray:
    """The features of every result of ``page`` from the vectors of its texts (by text)."""
    heads = [None if h is None else vector[h] for h in page.heads]
    products = np.stack([vector[t] for t in page.texts])
    negated = negated_in_titles(query, page.titles)
    return page_features(vector[query], products, page.categories, heads, negated)
