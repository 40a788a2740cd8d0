// Kernels of saejax for XLA's CPU backend, as XLA FFI handlers, each spread over XLA's intra-op
// thread pool. Built and registered by saejax/kernels/native.py.
//
// SaejaxTopK: the k largest entries of each row, the same indices as lax.top_k (descending, ties
// to the lower index, floats in XLA's total order: -0.0 below 0.0, NaNs at the ends by sign).
//   x [rows, width] f32, offset [width] f32 (read when has_offset) -> indices [rows, k] s32
//   Small k (<= kInsertionMaxK): one pass over the row keeping the k best in a sorted array; a
//   block of entries none of which beats the current k-th is skipped after one vectorised maximum.
//   Larger k: a partial selection (nth_element) of (key, index) pairs, then a sort of the k kept.
//
// The sparse TopK step's row traffic, without XLA's [B, k, d] temporaries (B·k rows of d gathered
// or scattered through memory); row b's k (latent, coefficient) pairs are index[b, :], a[b, :]:
// SaejaxGatherCombine: out[b] = Σ_j a[b, j] · table[index[b, j]]        table [F, d] -> out [B, d]
// SaejaxGatherDot:     out[b, j] = table[index[b, j]] · u[b]             u [B, d] -> out [B, k]
// SaejaxScatterOuter:  out[i] = Σ_{(b, j): index[b, j] = i} a[b, j] · u[b]        -> out [F, d]
//   (each of out's rows summed in (b, j) order, whatever the threads: deterministic). Indices
//   outside [0, F) are clamped by the gathers and dropped by the scatter, as XLA's are.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kInsertionMaxK = 64;
constexpr int64_t kBlock = 32;
constexpr int64_t kEntriesPerTask = 1 << 18;

// f32 -> u32 in XLA's total order of floats (negative floats' bits flipped, positive ones' sign set).
inline uint32_t OrderedKey(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits >> 31) ? ~bits : (bits | 0x80000000u);
}

// Puts (key, index) into the descending keys[0, n) / out[0, n) (at most k kept); an equal key
// arriving later (a higher index) goes after the ones already there.
inline void Insert(uint32_t key, int32_t index, int64_t k, int64_t& n, uint32_t* keys, int32_t* out) {
  if (n == k && key <= keys[k - 1]) return;
  int64_t pos = n < k ? n : k - 1;
  for (; pos > 0 && keys[pos - 1] < key; --pos) {
    keys[pos] = keys[pos - 1];
    out[pos] = out[pos - 1];
  }
  keys[pos] = key;
  out[pos] = index;
  if (n < k) ++n;
}

struct Scratch {
  std::vector<uint32_t> keys;
  std::vector<std::pair<uint32_t, int32_t>> pairs;
};

void RowByInsertion(const float* x, const float* offset, int64_t width, int64_t k, int32_t* out,
                    Scratch& scratch) {
  uint32_t* keys = scratch.keys.data();
  uint32_t block[kBlock];
  int64_t n = 0;
  for (int64_t start = 0; start < width; start += kBlock) {
    const int64_t len = std::min(kBlock, width - start);
    uint32_t most = 0;
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t key = OrderedKey(offset ? x[start + j] + offset[start + j] : x[start + j]);
      block[j] = key;
      most = key > most ? key : most;
    }
    if (n == k && most <= keys[k - 1]) continue;
    for (int64_t j = 0; j < len; ++j) Insert(block[j], static_cast<int32_t>(start + j), k, n, keys, out);
  }
}

void RowBySelection(const float* x, const float* offset, int64_t width, int64_t k, int32_t* out,
                    Scratch& scratch) {
  auto& pairs = scratch.pairs;
  for (int64_t i = 0; i < width; ++i) {
    pairs[i] = {OrderedKey(offset ? x[i] + offset[i] : x[i]), static_cast<int32_t>(i)};
  }
  auto before = [](const std::pair<uint32_t, int32_t>& a, const std::pair<uint32_t, int32_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  if (k < width) std::nth_element(pairs.begin(), pairs.begin() + k, pairs.begin() + width, before);
  std::sort(pairs.begin(), pairs.begin() + k, before);
  for (int64_t j = 0; j < k; ++j) out[j] = pairs[j].second;
}

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable all_done;
};

// Runs body(task, state) for every task in [0, tasks) over the pool and the calling thread, each
// participant with its own state = make_state(). The caller takes part, so the work ends even when
// no pool thread is free, and a pool thread that starts late finds nothing left and touches no buffer.
template <typename MakeState, typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t tasks, MakeState make_state, Body body) {
  auto progress = std::make_shared<Progress>();
  auto work = [=]() {
    auto state = make_state();
    int64_t finished = 0;
    for (int64_t t; (t = progress->next.fetch_add(1)) < tasks; ++finished) body(t, state);
    if (finished && progress->done.fetch_add(finished) + finished == tasks) {
      std::lock_guard<std::mutex> lock(progress->mu);
      progress->all_done.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), tasks - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([progress, work]() { work(); });
  work();
  std::unique_lock<std::mutex> lock(progress->mu);
  progress->all_done.wait(lock, [&] { return progress->done.load() == tasks; });
}

struct NoState {};

// x · y over n entries in kLanes running sums (vectorised, the same order on every call).
inline float Dot(const float* x, const float* y, int64_t n) {
  constexpr int64_t kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += x[i + l] * y[i + l];
  }
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  for (; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

// Rows per task so that a task covers about kEntriesPerTask entries.
inline int64_t RowsPerTask(int64_t width) { return std::max<int64_t>(1, kEntriesPerTask / std::max<int64_t>(width, 1)); }

inline int64_t Clamp(int32_t index, int64_t rows) {
  return index < 0 ? 0 : (index >= rows ? rows - 1 : index);
}

ffi::Error TopKImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> offset,
                    ffi::ResultBuffer<ffi::S32> indices, int64_t k, bool has_offset) {
  const auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("top_k: x must have at least one axis");
  const int64_t width = dims.back();
  if (k < 1 || k > width) return ffi::Error::InvalidArgument("top_k: k must be in [1, width]");
  if (has_offset && static_cast<int64_t>(offset.element_count()) != width) {
    return ffi::Error::InvalidArgument("top_k: offset must have one entry per column");
  }
  const int64_t rows = static_cast<int64_t>(x.element_count()) / width;
  const int64_t per_task = RowsPerTask(width);
  const float* x_data = x.typed_data();
  const float* offset_data = has_offset ? offset.typed_data() : nullptr;
  int32_t* out = indices->typed_data();
  auto make_scratch = [=]() {
    Scratch scratch;
    if (k <= kInsertionMaxK) scratch.keys.resize(k);
    else scratch.pairs.resize(width);
    return scratch;
  };
  ParallelFor(pool, (rows + per_task - 1) / per_task, make_scratch, [=](int64_t t, Scratch& scratch) {
    for (int64_t r = t * per_task; r < std::min(rows, (t + 1) * per_task); ++r) {
      if (k <= kInsertionMaxK) RowByInsertion(x_data + r * width, offset_data, width, k, out + r * k, scratch);
      else RowBySelection(x_data + r * width, offset_data, width, k, out + r * k, scratch);
    }
  });
  return ffi::Error::Success();
}

// The sizes of a (table [F, d], pairs index [B, k]) problem, checked.
struct PairShape {
  int64_t batch, k, rows, width;
};

ffi::Error CheckPairs(int64_t index_count, int64_t k, int64_t coefficient_count, int64_t rows, int64_t width,
                      PairShape& shape) {
  if (k < 1 || rows < 1 || width < 1 || index_count % k) {
    return ffi::Error::InvalidArgument("sparse rows: empty or ragged operands");
  }
  shape = {index_count / k, k, rows, width};
  if (coefficient_count != index_count) return ffi::Error::InvalidArgument("sparse rows: a and index differ in size");
  return ffi::Error::Success();
}

ffi::Error GatherCombineImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::F32> a,
                             ffi::Buffer<ffi::S32> index, ffi::ResultBuffer<ffi::F32> out) {
  const auto table_dims = table.dimensions();
  if (table_dims.size() != 2 || index.dimensions().size() < 1) {
    return ffi::Error::InvalidArgument("gather_combine: table must be [F, d] and index [..., k]");
  }
  PairShape shape;
  if (auto error = CheckPairs(index.element_count(), index.dimensions().back(), a.element_count(), table_dims[0],
                              table_dims[1], shape);
      error.failure()) {
    return error;
  }
  const float* t = table.typed_data();
  const float* coefficients = a.typed_data();
  const int32_t* at = index.typed_data();
  float* o = out->typed_data();
  const int64_t per_task = RowsPerTask(shape.k * shape.width);
  ParallelFor(pool, (shape.batch + per_task - 1) / per_task, [] { return NoState{}; }, [=](int64_t task, NoState&) {
    for (int64_t b = task * per_task; b < std::min(shape.batch, (task + 1) * per_task); ++b) {
      float* row = o + b * shape.width;
      std::fill(row, row + shape.width, 0.0f);
      for (int64_t j = 0; j < shape.k; ++j) {
        const float c = coefficients[b * shape.k + j];
        const float* source = t + Clamp(at[b * shape.k + j], shape.rows) * shape.width;
        for (int64_t i = 0; i < shape.width; ++i) row[i] += c * source[i];
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error GatherDotImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::F32> u,
                         ffi::Buffer<ffi::S32> index, ffi::ResultBuffer<ffi::F32> out) {
  const auto table_dims = table.dimensions();
  if (table_dims.size() != 2 || index.dimensions().size() < 1) {
    return ffi::Error::InvalidArgument("gather_dot: table must be [F, d] and index [..., k]");
  }
  PairShape shape;
  const int64_t k = index.dimensions().back();
  if (auto error = CheckPairs(index.element_count(), k, out->element_count(), table_dims[0], table_dims[1], shape);
      error.failure()) {
    return error;
  }
  if (static_cast<int64_t>(u.element_count()) != shape.batch * shape.width) {
    return ffi::Error::InvalidArgument("gather_dot: u must be [B, d]");
  }
  const float* t = table.typed_data();
  const float* vectors = u.typed_data();
  const int32_t* at = index.typed_data();
  float* o = out->typed_data();
  const int64_t per_task = RowsPerTask(shape.k * shape.width);
  ParallelFor(pool, (shape.batch + per_task - 1) / per_task, [] { return NoState{}; }, [=](int64_t task, NoState&) {
    for (int64_t b = task * per_task; b < std::min(shape.batch, (task + 1) * per_task); ++b) {
      const float* vector = vectors + b * shape.width;
      for (int64_t j = 0; j < shape.k; ++j) {
        const float* source = t + Clamp(at[b * shape.k + j], shape.rows) * shape.width;
        o[b * shape.k + j] = Dot(source, vector, shape.width);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error ScatterOuterImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> u,
                            ffi::Buffer<ffi::S32> index, ffi::ResultBuffer<ffi::F32> out) {
  const auto out_dims = out->dimensions();
  if (out_dims.size() != 2 || index.dimensions().size() < 1) {
    return ffi::Error::InvalidArgument("scatter_outer: out must be [F, d] and index [..., k]");
  }
  PairShape shape;
  if (auto error = CheckPairs(index.element_count(), index.dimensions().back(), a.element_count(), out_dims[0],
                              out_dims[1], shape);
      error.failure()) {
    return error;
  }
  if (static_cast<int64_t>(u.element_count()) != shape.batch * shape.width) {
    return ffi::Error::InvalidArgument("scatter_outer: u must be [B, d]");
  }
  const float* coefficients = a.typed_data();
  const float* vectors = u.typed_data();
  const int32_t* at = index.typed_data();
  float* o = out->typed_data();
  // Each task owns a band of out's rows and walks every pair in (b, j) order, adding those that
  // fall in its band: every row's sum has one order whatever the number of threads.
  const int64_t bands = std::min<int64_t>(shape.rows, std::max<int64_t>(1, 4 * (pool.num_threads() + 1)));
  const int64_t per_band = (shape.rows + bands - 1) / bands;
  const int64_t pairs = shape.batch * shape.k;
  ParallelFor(pool, bands, [] { return NoState{}; }, [=](int64_t band, NoState&) {
    const int64_t first = band * per_band, last = std::min(shape.rows, first + per_band);
    if (first >= last) return;  // rounding up per_band can leave the last bands empty
    std::fill(o + first * shape.width, o + last * shape.width, 0.0f);
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t i = at[p];
      if (i < first || i >= last) continue;
      const float c = coefficients[p];
      const float* vector = vectors + (p / shape.k) * shape.width;
      float* row = o + i * shape.width;
      for (int64_t e = 0; e < shape.width; ++e) row[e] += c * vector[e];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaejaxTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k")
                                  .Attr<bool>("has_offset"));

// (table or coefficients f32, vectors f32, index s32) -> f32: the binding of the three row kernels.
#define SAEJAX_ROWS_BINDING                                                                             \
  ffi::Ffi::Bind()                                                                                      \
      .Ctx<ffi::ThreadPool>()                                                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                     \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                     \
      .Arg<ffi::Buffer<ffi::S32>>()                                                                     \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(SaejaxGatherCombine, GatherCombineImpl, SAEJAX_ROWS_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaejaxGatherDot, GatherDotImpl, SAEJAX_ROWS_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SaejaxScatterOuter, ScatterOuterImpl, SAEJAX_ROWS_BINDING);
