"""The order in which a streamed source reads its texts: a pure function of (seed, the corpus).

The corpus (any re-readable sequence of texts, e.g. `saejax.harvest.run_texts`) is read again and
again, one pass per epoch. Each pass is cut into blocks of ``block_texts`` consecutive texts (the
last one shorter), and each block is permuted by a permutation drawn from (seed, epoch, block), so
neighbouring positions hold texts from all over a block and every epoch differs; ``block_texts=1``
keeps the corpus order. Position p of the order is therefore the same text in every process and
every run, and only one block is held in memory.

Reading goes forward: `texts(start, stop)` for positions inside or after the current block costs
no more than reading up to them; an earlier position, or one epochs ahead, re-reads the corpus from
the beginning of its epoch (once per resumed run, no model work).
"""

from collections.abc import Callable, Iterable
from itertools import islice

from saejax.data import STREAM_TEXT_BLOCK, rng
from saejax.errors import ConfigError, DataError


class TextOrder:
    """Texts at any positions of the shuffled, endlessly repeated corpus; see the module docstring.

    Attributes:
        epoch_texts: texts per pass of the corpus, known once the first pass has been read (else None).
    """

    def __init__(self, corpus: Callable[[], Iterable[str]], seed: int, block_texts: int) -> None:
        if block_texts < 1:
            raise ConfigError(f"data.shuffle_texts must be >= 1, got {block_texts}")
        self.corpus, self.seed, self.block_texts = corpus, seed, block_texts
        self.epoch_texts: int | None = None
        self._restart()

    def _restart(self, epoch: int = 0) -> None:
        """Read from the beginning of `epoch` (0, or any once `epoch_texts` is known)."""
        self._texts = iter(self.corpus())
        self._epoch, self._block_index, self._epoch_start = epoch, -1, epoch * (self.epoch_texts or 0)
        self._block_start, self._block = self._epoch_start, []

    def _next_block(self) -> None:
        """Move on to the next block, into the next epoch at the end of a pass."""
        self._block_start += len(self._block)
        texts = list(islice(self._texts, self.block_texts))
        self._block_index += 1
        if not texts:
            if self._block_start == self._epoch_start:
                raise DataError("the corpus holds no texts (check model.text_glob)")
            self.epoch_texts = self._block_start - self._epoch_start
            self._texts = iter(self.corpus())
            self._epoch, self._block_index, self._epoch_start = self._epoch + 1, 0, self._block_start
            texts = list(islice(self._texts, self.block_texts))
            if not texts:
                raise DataError("the corpus gave no texts on its second reading; it must give the same texts each time")
        permutation = rng(self.seed, STREAM_TEXT_BLOCK, self._epoch, self._block_index).permutation(len(texts))
        self._block = [texts[i] for i in permutation]

    def _seek(self, position: int) -> None:
        """Make the current block the one holding `position`: read on, or start again at its epoch
        (once the corpus size is known) when it lies behind or epochs ahead."""
        if position < self._block_start:
            self._restart(position // self.epoch_texts if self.epoch_texts else 0)
        while position >= self._block_start + len(self._block):
            if self.epoch_texts and position >= self._epoch_start + 2 * self.epoch_texts:
                self._restart(position // self.epoch_texts)
            else:
                self._next_block()

    def texts(self, start: int, stop: int) -> list[str]:
        """The texts at positions [start, stop) of the order."""
        out: list[str] = []
        while len(out) < stop - start:
            position = start + len(out)
            self._seek(position)
            offset = position - self._block_start
            out.extend(self._block[offset:offset + stop - position])
        return out
