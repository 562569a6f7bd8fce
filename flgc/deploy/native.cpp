// CPU kernels for deployed networks whose channels travel in permuted orders (flgc/native.py builds
// this file on first use). All take NCHW float32 tensors, contiguous or channels_last, and split the
// work over torch's intra-op threads. On channels_last tensors each pixel's channels are one row;
// with AVX2 (checked at load time) eight rows at a time are transposed so that a permutation of the
// channels moves whole vectors; elsewhere a scalar loop reads each row in permuted order. A grouped
// 1x1 conv on channels_last rows (AVX2 + FMA) serves deployed FLGC layers, whose small groups
// torch's grouped conv computes slowly.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FLGC_X86 1
#include <immintrin.h>
#endif

namespace {

using Index = std::vector<int32_t>;

// A tensor with one channel or one pixel per image is both contiguous and channels_last: the
// kernels treat it as contiguous.
bool rows_layout(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 4, name,
              ": a 4-d float32 CPU tensor is required");
  TORCH_CHECK(rows_layout(t) || t.is_contiguous(), name, ": contiguous or channels_last memory is required");
}

void check_peer(const at::Tensor& first, const at::Tensor& second) {
  TORCH_CHECK(first.size(0) == second.size(0) && first.size(2) == second.size(2) && first.size(3) == second.size(3),
              "the two tensors differ in N, H or W");
  TORCH_CHECK(rows_layout(first) ? second.is_contiguous(at::MemoryFormat::ChannelsLast) : second.is_contiguous(),
              "the two tensors must share one memory layout");
}

// The entries of a channel index, checked: each in [lowest, bound) (lowest -1: -1 marks padding).
Index read_index(const at::Tensor& index, int64_t size, int64_t bound, int64_t lowest = 0) {
  TORCH_CHECK(index.device().is_cpu() && index.scalar_type() == at::kLong && index.dim() == 1 &&
                  index.numel() == size && index.is_contiguous(),
              "index: a contiguous int64 vector of ", size, " entries is required");
  const int64_t* idx = index.data_ptr<int64_t>();
  for (int64_t i = 0; i < size; ++i) TORCH_CHECK(idx[i] >= lowest && idx[i] < bound, "index: entry out of range");
  return Index(idx, idx + size);
}

// Rows of a channels_last tensor per task: about 16k floats.
int64_t row_grain(int64_t channels) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(channels, 1)); }

at::Tensor empty_like_layout(const at::Tensor& x, int64_t channels, bool rows) {
  auto format = rows ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty({x.size(0), channels, x.size(2), x.size(3)}, x.options().memory_format(format));
}

// One row: to[j] = ra[ia[j]] + rb[ib[j]] for j < k, or to[j] = ra[ia[j]] where rb is null; max(., 0)
// with relu (NaN stays NaN, as in torch).
void row_plain(const float* ra, const float* rb, const int32_t* ia, const int32_t* ib, float* to, int64_t k,
               bool relu) {
  if (rb) {
    for (int64_t j = 0; j < k; ++j) to[j] = ra[ia[j]] + rb[ib[j]];
  } else {
    for (int64_t j = 0; j < k; ++j) to[j] = ra[ia[j]];
  }
  if (relu)
    for (int64_t j = 0; j < k; ++j) to[j] = to[j] < 0.f ? 0.f : to[j];
}

#ifdef FLGC_X86
// Eight rows at a time on AVX2: the rows are transposed 8 x 8 into channel-major scratch (one 8-float
// vector per channel: that channel in the eight rows), so that taking channels in any order is one
// vector load per channel instead of eight scalar loads; the results are transposed back into rows.
constexpr int64_t kTile = 8;

__attribute__((target("avx2"))) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// t[c * 8 + p] = rows[p][c] for c < channels
__attribute__((target("avx2"))) void rows_to_columns(const float* const rows[kTile], int64_t channels, float* t) {
  int64_t c = 0;
  for (; c + kTile <= channels; c += kTile) {
    __m256 r[8];
    for (int p = 0; p < 8; ++p) r[p] = _mm256_loadu_ps(rows[p] + c);
    transpose8(r);
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(t + (c + i) * kTile, r[i]);
  }
  for (; c < channels; ++c)
    for (int p = 0; p < 8; ++p) t[c * kTile + p] = rows[p][c];
}

// out row p (at out + p * k), channel j = ta[ia[j]][p] + tb[ib[j]][p] (tb null: ta only), max(., 0) with relu
__attribute__((target("avx2"))) void columns_to_rows(const float* ta, const float* tb, const int32_t* ia,
                                                    const int32_t* ib, float* out, int64_t k, bool relu) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + kTile <= k; j += kTile) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm256_loadu_ps(ta + ia[j + i] * kTile);
      if (tb) r[i] = _mm256_add_ps(r[i], _mm256_loadu_ps(tb + ib[j + i] * kTile));
      if (relu) r[i] = _mm256_max_ps(zero, r[i]);  // the second operand where either is NaN
    }
    transpose8(r);
    for (int p = 0; p < 8; ++p) _mm256_storeu_ps(out + p * k + j, r[p]);
  }
  for (; j < k; ++j)
    for (int p = 0; p < 8; ++p) {
      const float v = tb ? ta[ia[j] * kTile + p] + tb[ib[j] * kTile + p] : ta[ia[j] * kTile + p];
      out[p * k + j] = relu && v < 0.f ? 0.f : v;
    }
}

// A grouped 1x1 conv on channels_last rows, AVX2 + FMA: P rows times OB vectors of 8 output channels
// of one group accumulate in registers; each step broadcasts one input channel of each row and
// multiplies it with 8 consecutive filters' weights (weight laid out group x input x output).
template <int P, int OB>
__attribute__((target("avx2,fma"))) inline void pointwise_tile(const float* const* in, float* const* out,
                                                              const float* weight, const float* bias, int64_t ci,
                                                              int64_t co) {
  __m256 acc[P][OB];
#pragma GCC unroll 8
  for (int ob = 0; ob < OB; ++ob) {
    const __m256 b = _mm256_loadu_ps(bias + 8 * ob);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[p][ob] = b;
  }
  for (int64_t i = 0; i < ci; ++i) {
    __m256 w[OB];
#pragma GCC unroll 8
    for (int ob = 0; ob < OB; ++ob) w[ob] = _mm256_loadu_ps(weight + i * co + 8 * ob);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m256 v = _mm256_broadcast_ss(in[p] + i);
#pragma GCC unroll 8
      for (int ob = 0; ob < OB; ++ob) acc[p][ob] = _mm256_fmadd_ps(v, w[ob], acc[p][ob]);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int ob = 0; ob < OB; ++ob) _mm256_storeu_ps(out[p] + 8 * ob, acc[p][ob]);
}

// Rows [r0, r0 + P) of every group (co a multiple of 8): 16 outputs at a time for 4 rows, or 8
// outputs for 8 rows (8 accumulators either way, enough to keep both FMA units busy). The input of
// the next 8 rows is asked for ahead, a group at a time (the hardware prefetcher follows eight
// interleaved rows poorly).
// y: the output of row r0 (rows cout floats apart).
template <int P>
__attribute__((target("avx2,fma"))) void pointwise_rows(const float* x, float* y, const float* weight,
                                                        const float* bias, int64_t r0, int64_t rows, int64_t c,
                                                        int64_t cout, int64_t groups, int64_t ci, int64_t co) {
  for (int64_t g = 0; g < groups; ++g) {
    if (P == 8 && r0 + 16 <= rows)
      for (int p = 0; p < 8; ++p)
        for (int64_t i = 0; i < ci; i += 16) __builtin_prefetch(x + (r0 + 8 + p) * c + g * ci + i);
    const float* wg = weight + g * ci * co;
    for (int64_t o = 0; o < co;) {
      const float* in[P];
      float* out[P];
      for (int p = 0; p < P; ++p) {
        in[p] = x + (r0 + p) * c + g * ci;
        out[p] = y + p * cout + g * co + o;
      }
      const float* b = bias + g * co + o;
      if (co - o >= 16) {
        if (P == 8) {
          pointwise_tile<4, 2>(in, out, wg + o, b, ci, co);
          pointwise_tile<4, 2>(in + 4, out + 4, wg + o, b, ci, co);
        } else {
          pointwise_tile<1, 2>(in, out, wg + o, b, ci, co);
        }
        o += 16;
      } else {
        pointwise_tile<P, 1>(in, out, wg + o, b, ci, co);
        o += 8;
      }
    }
  }
}
#endif

// Instruction sets by rank: the kernels use the highest the CPU has, or a lower one set by row_isa.
const char* const kIsaNames[] = {"plain", "avx2"};
#ifdef FLGC_X86
constexpr int kIsaCount = 2;
#else
constexpr int kIsaCount = 1;
#endif

int best_isa() {
#ifdef FLGC_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

std::atomic<int> isa_rank{best_isa()};

// Rows are read in a random order of their channels, which the hardware prefetcher does not follow:
// the row loops ask for the cache lines of a row a few rows ahead.
constexpr int64_t kAhead = 2;
inline void prefetch_row(const float* row, int64_t length) {
  for (int64_t i = 0; i < length; i += 16) __builtin_prefetch(row + i);
}

void add_rows(float* __restrict__ base, const float* __restrict__ other, const int32_t* __restrict__ idx,
              int64_t cb, int64_t co, bool relu, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    float* __restrict__ row = base + r * cb;
    const float* __restrict__ add = other + r * co;
    if (r + kAhead < end) prefetch_row(row + kAhead * cb, cb);
    for (int64_t i = 0; i < co; ++i) row[idx[i]] += add[i];
    if (relu)
      for (int64_t c = 0; c < cb; ++c) row[c] = row[c] < 0.f ? 0.f : row[c];
  }
}

// Rows [begin, end) of k channels: out row r = a_row(r)[ia] + b_row(r)[ib] (b_row null: a's only), max(., 0)
// with relu. Rows of out may be rows of a (reuse): a tile's rows are all read before any is written,
// and a single row over its own input is made in a scratch row first.
template <typename RowA, typename RowB>
void permute_rows(RowA a_row, RowB b_row, int64_t ca, int64_t cb, float* out, const int32_t* ia, const int32_t* ib,
                  int64_t k, bool relu, int64_t begin, int64_t end) {
  int64_t r = begin;
#ifdef FLGC_X86
  if (isa_rank.load() >= 1 && end - begin >= kTile) {
    std::vector<float> ta(ca * kTile), tb(b_row(begin) ? cb * kTile : 0);
    const float* rows[kTile];
    for (; r + kTile <= end; r += kTile) {
      for (int p = 0; p < kTile; ++p) rows[p] = a_row(r + p);
      rows_to_columns(rows, ca, ta.data());
      if (!tb.empty()) {
        for (int p = 0; p < kTile; ++p) rows[p] = b_row(r + p);
        rows_to_columns(rows, cb, tb.data());
      }
      columns_to_rows(ta.data(), tb.empty() ? nullptr : tb.data(), ia, ib, out + r * k, k, relu);
    }
  }
#endif
  std::vector<float> scratch(r < end ? k : 0);
  for (; r < end; ++r) {
    if (r + kAhead < end) {
      prefetch_row(a_row(r + kAhead), ca);
      if (b_row(r)) prefetch_row(b_row(r + kAhead), cb);
    }
    float* to = out + r * k;
    const bool over_a = to == a_row(r);
    row_plain(a_row(r), b_row(r), ia, ib, over_a ? scratch.data() : to, k, relu);
    if (over_a) std::copy(scratch.begin(), scratch.end(), to);
  }
}

// The output channels of a permuted sum that are padding (-1 in both indices): they are computed
// from channel 0 of each operand, then overwritten with zero.
std::vector<int64_t> padding_entries(Index& ia, Index& ib) {
  std::vector<int64_t> padding;
  for (size_t j = 0; j < ia.size(); ++j) {
    TORCH_CHECK((ia[j] < 0) == (ib[j] < 0), "left and right: -1 (padding) at the same entries only");
    if (ia[j] < 0) {
      padding.push_back(int64_t(j));
      ia[j] = ib[j] = 0;
    }
  }
  return padding;
}

// base[:, index[i]] += other[:, i] for every channel i of other (in turn where entries repeat); then,
// with relu, base = max(base, 0) over all of base's channels (those no entry names are only rectified).
void permuted_add_(at::Tensor base, const at::Tensor& other, const at::Tensor& index, bool relu) {
  check_input(base, "base");
  check_input(other, "other");
  check_peer(base, other);
  const int64_t n = base.size(0), cb = base.size(1), co = other.size(1), plane = base.size(2) * base.size(3);
  const Index idx = read_index(index, co, cb);
  float* b = base.data_ptr<float>();
  const float* o = other.data_ptr<float>();
  if (rows_layout(base)) {
    at::parallel_for(0, n * plane, row_grain(cb), [&](int64_t begin, int64_t end) {
      add_rows(b, o, idx.data(), cb, co, relu, begin, end);
    });
    return;
  }
  // the channels of other added into each channel c of base: sources[first[c] .. first[c + 1])
  std::vector<int64_t> first(cb + 1, 0), sources(co);
  for (int64_t i = 0; i < co; ++i) ++first[idx[i] + 1];
  for (int64_t c = 0; c < cb; ++c) first[c + 1] += first[c];
  std::vector<int64_t> next(first.begin(), first.end() - 1);
  for (int64_t i = 0; i < co; ++i) sources[next[idx[i]]++] = i;
  at::parallel_for(0, n * cb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {  // one channel plane of one image
      float* out = b + p * plane;
      const int64_t image = p / cb, c = p % cb;
      for (int64_t s = first[c]; s < first[c + 1]; ++s) {
        const float* add = o + (image * co + sources[s]) * plane;
        if (relu && s + 1 == first[c + 1]) {  // the last source: add and rectify in one pass
          for (int64_t k = 0; k < plane; ++k) out[k] = out[k] + add[k] < 0.f ? 0.f : out[k] + add[k];
          break;
        }
        for (int64_t k = 0; k < plane; ++k) out[k] += add[k];
      }
      if (relu && first[c] == first[c + 1])
        for (int64_t k = 0; k < plane; ++k) out[k] = out[k] < 0.f ? 0.f : out[k];
    }
  });
}

// a[:, left] + b[:, right] in a's memory layout, rectified with relu: a sum of two tensors that hold
// the same channels in different orders, delivered in a third order. Where left and right are both
// -1 the output channel is zero (padding). With reuse, a channels_last `a` of as many channels as
// the result is overwritten with it (a must be read by nothing else); otherwise the result is new.
at::Tensor permuted_sum(const at::Tensor& a, const at::Tensor& b, const at::Tensor& left, const at::Tensor& right,
                        bool relu, bool reuse) {
  check_input(a, "a");
  check_input(b, "b");
  check_peer(a, b);
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), k = left.numel(), plane = a.size(2) * a.size(3);
  Index ia = read_index(left, k, ca, -1), ib = read_index(right, k, cb, -1);
  const std::vector<int64_t> padding = padding_entries(ia, ib);
  const bool rows = rows_layout(a);
  at::Tensor out = reuse && rows && k == ca ? a : empty_like_layout(a, k, rows);
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* d = out.data_ptr<float>();
  if (rows) {
    at::parallel_for(0, n * plane, row_grain(ca + cb), [&](int64_t begin, int64_t end) {
      permute_rows([&](int64_t r) { return pa + r * ca; }, [&](int64_t r) { return pb + r * cb; }, ca, cb, d,
                   ia.data(), ib.data(), k, relu, begin, end);
      for (int64_t r = begin; r < end; ++r)
        for (int64_t j : padding) d[r * k + j] = 0.f;
    });
    return out;
  }
  at::parallel_for(0, n * k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t image = p / k, j = p % k;
      float* to = d + p * plane;
      const float* fa = pa + (image * ca + ia[j]) * plane;
      const float* fb = pb + (image * cb + ib[j]) * plane;
      if (relu) {
        for (int64_t q = 0; q < plane; ++q) to[q] = fa[q] + fb[q] < 0.f ? 0.f : fa[q] + fb[q];
      } else {
        for (int64_t q = 0; q < plane; ++q) to[q] = fa[q] + fb[q];
      }
    }
  });
  for (int64_t image = 0; image < n; ++image)
    for (int64_t j : padding) std::fill(d + (image * k + j) * plane, d + (image * k + j + 1) * plane, 0.f);
  return out;
}

// x[:, index, ::stride, ::stride] in x's memory layout.
at::Tensor gather_channels(const at::Tensor& x, const at::Tensor& index, int64_t stride) {
  check_input(x, "x");
  TORCH_CHECK(stride >= 1, "stride: 1 or more");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), k = index.numel();
  const int64_t oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  const Index idx = read_index(index, k, c);
  const bool rows = rows_layout(x);
  auto format = rows ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({n, k, oh, ow}, x.options().memory_format(format));
  const float* s = x.data_ptr<float>();
  float* d = out.data_ptr<float>();
  if (rows) {
    // output row r is input pixel (image, y * stride, x * stride)
    auto source = [&](int64_t r) {
      const int64_t image = r / (oh * ow), y = r / ow % oh, xpos = r % ow;
      return s + ((image * h + y * stride) * w + xpos * stride) * c;
    };
    auto none = [](int64_t) -> const float* { return nullptr; };
    at::parallel_for(0, n * oh * ow, row_grain(c), [&](int64_t begin, int64_t end) {
      permute_rows(source, none, c, 0, d, idx.data(), nullptr, k, false, begin, end);
    });
    return out;
  }
  at::parallel_for(0, n * k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* from = s + ((p / k) * c + idx[p % k]) * h * w;
      float* to = d + p * oh * ow;
      if (stride == 1) {
        std::copy(from, from + h * w, to);
        continue;
      }
      for (int64_t y = 0; y < oh; ++y)
        for (int64_t xpos = 0; xpos < ow; ++xpos) to[y * ow + xpos] = from[(y * stride) * w + xpos * stride];
    }
  });
  return out;
}

void check_pointwise(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "x: a 4-d float32 CPU tensor in channels_last memory is required");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 3 &&
                  weight.is_contiguous(), "weight: a contiguous float32 groups x in x out tensor is required");
  TORCH_CHECK(weight.size(0) * weight.size(1) == x.size(1), "weight: groups x in must equal x's channels");
  TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == at::kFloat && bias.dim() == 1 &&
                  bias.numel() == weight.size(0) * weight.size(2) && bias.is_contiguous(),
              "bias: a contiguous float32 vector of groups x out entries is required");
}

// A grouped 1x1 conv (stride 1) of a channels_last x: weight groups x (C / groups) x (out / groups), each
// group's matrix transposed (input x output), bias of `out`. Output channels_last.
at::Tensor grouped_pointwise(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_pointwise(x, weight, bias);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t groups = weight.size(0), ci = weight.size(1), co = weight.size(2), cout = groups * co;
  at::Tensor y = at::empty({n, cout, h, w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* px = x.data_ptr<float>();
  const float* pw = weight.data_ptr<float>();
  const float* pb = bias.data_ptr<float>();
  float* py = y.data_ptr<float>();
  const int64_t rows = n * h * w;
#ifdef FLGC_X86
  if (isa_rank.load() >= 1 && co % 8 == 0) {
    at::parallel_for(0, (rows + 7) / 8, 4, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t r0 = block * 8;
        if (r0 + 8 <= rows) {
          pointwise_rows<8>(px, py + r0 * cout, pw, pb, r0, rows, c, cout, groups, ci, co);
        } else {
          for (int64_t r = r0; r < rows; ++r)
            pointwise_rows<1>(px, py + r * cout, pw, pb, r, rows, c, cout, groups, ci, co);
        }
      }
    });
    return y;
  }
#endif
  at::parallel_for(0, rows, 32, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t o = 0; o < co; ++o) {
          float sum = pb[g * co + o];
          for (int64_t i = 0; i < ci; ++i) sum += px[r * c + g * ci + i] * pw[(g * ci + i) * co + o];
          py[r * cout + g * co + o] = sum;
        }
  });
  return y;
}

// permuted_sum(grouped_pointwise(x, weight, bias), b, left, right, relu) without writing the conv's
// output: with AVX2 + FMA each task computes eight rows of it into a scratch tile, which the sum
// then reads from cache (one pass over memory less, and no tensor of the conv's size). Output
// channels_last, like b. With reuse, a b of as many channels as the result is overwritten with it
// (b must be read by nothing else afterwards; x must not share its memory).
at::Tensor grouped_pointwise_sum(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& b, const at::Tensor& left, const at::Tensor& right, bool relu,
                                 bool reuse) {
  check_pointwise(x, weight, bias);
  check_input(b, "b");
  TORCH_CHECK(b.is_contiguous(at::MemoryFormat::ChannelsLast) && b.size(0) == x.size(0) && b.size(2) == x.size(2) &&
                  b.size(3) == x.size(3), "b: channels_last memory and x's N, H and W are required");
  const int64_t groups = weight.size(0), ci = weight.size(1), co = weight.size(2), cout = groups * co;
#ifdef FLGC_X86
  if (isa_rank.load() >= 1 && co % 8 == 0) {
    const int64_t n = x.size(0), c = x.size(1), cb = b.size(1), k = left.numel(), rows = n * x.size(2) * x.size(3);
    Index ia = read_index(left, k, cout, -1), ib = read_index(right, k, cb, -1);
    const std::vector<int64_t> padding = padding_entries(ia, ib);
    at::Tensor out = reuse && k == cb ? b
                                      : at::empty({n, k, x.size(2), x.size(3)},
                                                  x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const float* px = x.data_ptr<float>();
    const float* pw = weight.data_ptr<float>();
    const float* pbias = bias.data_ptr<float>();
    const float* pr = b.data_ptr<float>();
    float* d = out.data_ptr<float>();
    at::parallel_for(0, (rows + kTile - 1) / kTile, 4, [&](int64_t begin, int64_t end) {
      std::vector<float> tile(kTile * cout), ta(cout * kTile), tb(cb * kTile), row(k);
      const float* from[kTile];
      for (int64_t block = begin; block < end; ++block) {
        const int64_t r0 = block * kTile, r1 = std::min(r0 + kTile, rows);
        if (r1 - r0 == kTile) {
          pointwise_rows<8>(px, tile.data(), pw, pbias, r0, rows, c, cout, groups, ci, co);
          for (int p = 0; p < kTile; ++p) from[p] = tile.data() + p * cout;
          rows_to_columns(from, cout, ta.data());
          for (int p = 0; p < kTile; ++p) from[p] = pr + (r0 + p) * cb;
          rows_to_columns(from, cb, tb.data());
          columns_to_rows(ta.data(), tb.data(), ia.data(), ib.data(), d + r0 * k, k, relu);
        } else {  // a tile reads all its rows of b before it writes; a single row is made aside first
          for (int64_t r = r0; r < r1; ++r) {
            pointwise_rows<1>(px, tile.data(), pw, pbias, r, rows, c, cout, groups, ci, co);
            row_plain(tile.data(), pr + r * cb, ia.data(), ib.data(), row.data(), k, relu);
            std::copy(row.begin(), row.end(), d + r * k);
          }
        }
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t j : padding) d[r * k + j] = 0.f;
      }
    });
    return out;
  }
#endif
  return permuted_sum(grouped_pointwise(x, weight, bias), b, left, right, relu, true);  // the sum over the conv's output
}

// The instruction set of the row kernels: "" asks, "best" restores the default, a name from kIsaNames
// picks that one (refused where the CPU lacks it). Returns the one in use afterwards.
std::string row_isa(const std::string& choice) {
  if (choice == "best") {
    isa_rank = best_isa();
  } else if (!choice.empty()) {
    const int rank = int(std::find(kIsaNames, kIsaNames + kIsaCount, choice) - kIsaNames);
    TORCH_CHECK(rank < kIsaCount && rank <= best_isa(), "row_isa: ", choice, " is not available on this CPU");
    isa_rank = rank;
  }
  return kIsaNames[isa_rank.load()];
}

}  // namespace

TORCH_LIBRARY(flgc, m) {
  m.def("permuted_add_(Tensor(a!) base, Tensor other, Tensor index, bool relu) -> ()", &permuted_add_);
  m.def("permuted_sum(Tensor(a!) a, Tensor b, Tensor left, Tensor right, bool relu, bool reuse) -> Tensor", &permuted_sum);
  m.def("gather_channels(Tensor x, Tensor index, int stride) -> Tensor", &gather_channels);
  m.def("grouped_pointwise(Tensor x, Tensor weight, Tensor bias) -> Tensor", &grouped_pointwise);
  m.def("grouped_pointwise_sum(Tensor x, Tensor weight, Tensor bias, Tensor(a!) b, Tensor left, Tensor right, bool relu, bool reuse) -> Tensor",
        &grouped_pointwise_sum);
  m.def("row_isa(str choice) -> str", &row_isa);
}
