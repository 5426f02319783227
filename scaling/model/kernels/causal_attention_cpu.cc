// Causal and prefix-bidirectional softmax attention of fresh sequences on a CPU: the forward
// pass (output and the log-sum-exp of each query's scores) and a flash-attention-style
// backward pass, as XLA FFI handlers. Built and registered by scaling/cpu_attention.py.
//
// Layout: q, k, v, o and their gradients are (batch, T, heads, D) float32; lse is
// (batch, heads, T); prefix is (batch,) int32. Query i of sequence b sees key j when j <= i or
// j < prefix[b]: prefix 0 (or 1) is causal attention, prefix T full bidirectional attention,
// and in between a prefix LM (the first prefix[b] positions see each other).
//
// Each (sequence, head) pair is one work item, spread over XLA's intra-op thread pool. Within
// an item, queries go R rows at a time against the keys at or below the block's last row or
// in the prefix (rounded up to the key tile), with every operand in cache: scores are an
// R x kKeyTile register tile over D, and the products with V (and, backward, the gradients of
// Q, K and V) are R-row register tiles over D. They are written with GCC vector extensions one
// machine register wide (16 floats with AVX-512, 8 with AVX, else 4): a vector type wider than
// the machine's registers is split by the compiler and passed through the stack on every
// operation.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using scaling_kernels::parallel_for;

namespace {

// kLanes: floats per vector register; kRegs: vector registers; kMinRows: the fewest query rows
// per tile. With 16 registers, tiles of fewer than 4 rows leave the multiply-adds waiting on
// loads; past the register file, operands come from L1 as the multiply-adds' memory operands.
#if defined(__AVX512F__)
constexpr int kLanes = 16, kRegs = 32, kMinRows = 2;
#elif defined(__AVX__)
constexpr int kLanes = 8, kRegs = 16, kMinRows = 4;
#elif defined(__aarch64__)
constexpr int kLanes = 4, kRegs = 32, kMinRows = 4;
#else
constexpr int kLanes = 4, kRegs = 16, kMinRows = 4;
#endif
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));  // one register of floats
constexpr int kKeyTile = 2 * kLanes;  // keys per score tile: two registers per query row

typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));  // its lanes as integers

inline vf load(const float* p) { vf r; std::memcpy(&r, p, sizeof(r)); return r; }
inline void store(float* p, vf x) { std::memcpy(p, &x, sizeof(x)); }
inline int round_up(int x, int m) { return (x + m - 1) / m * m; }
inline vf splat(float x) { return vf{} + x; }

// exp of each lane: 2^n exp(r) with n = round(x / ln 2) and |r| <= ln 2 / 2, exp(r) by Cephes'
// expf polynomial (about 1 ulp); lanes below -87.3 (exp under FLT_MIN) give 0. The softmax's
// exponentials are a scalar libm call per score otherwise: without -ffast-math's own switch
// (see FAST_MATH in kernel_cache.py) the compiler has no vector exp to call.
inline vf vexp(vf x) {
  const vf lo = splat(-87.3f), hi = splat(88.3f);
  const vf xc = x < lo ? lo : (x > hi ? hi : x);
  const vf t = xc * 1.44269504f + 0.5f;
  vi n = __builtin_convertvector(t, vi);  // truncates towards zero
  vf nf = __builtin_convertvector(n, vf);
  n += (vi)(nf > t);  // floor: one less where truncation rounded up (comparisons give -1)
  nf = __builtin_convertvector(n, vf);
  vf r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const vf pow2n = (vf)((n + 127) << 23);
  return x < lo ? vf{} : y * pow2n;
}

inline float hsum(vf x) { float s = 0.f; for (int l = 0; l < kLanes; ++l) s += x[l]; return s; }
inline float hmax(vf x) { float m = x[0]; for (int l = 1; l < kLanes; ++l) m = std::max(m, x[l]); return m; }
constexpr float kMasked = -1e30f;  // a score no query sees: its exponential is 0

struct Dims { int64_t B, T, H; const int32_t* prefix; };  // batch, sequence length, heads; prefix per sequence

template <int D>
struct Kernel {
  static_assert(D % kLanes == 0, "the head size must be a multiple of the vector width");
  static constexpr int DV = D / kLanes;
  // Query rows per tile: R rows of DV accumulators and DV operands in half the registers or
  // fewer, within [kMinRows, 8].
  static constexpr int R = std::clamp(kRegs / (2 * DV), kMinRows, 8);

  // S[r][j] = sum_c A[r][c] * BT[c][j] for r < R, j < n (n a multiple of kKeyTile).
  static void scores(const float* A, const float* BT, int ldb, int n, float* S, int lds) {
    for (int j = 0; j < n; j += kKeyTile) {
      vf acc[R][2] = {};
      for (int c = 0; c < D; ++c) {
        vf b0 = load(BT + c * ldb + j), b1 = load(BT + c * ldb + j + kLanes);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          float a = A[r * D + c];
          acc[r][0] += b0 * a;
          acc[r][1] += b1 * a;
        }
      }
      for (int r = 0; r < R; ++r) {
        store(S + r * lds + j, acc[r][0]);
        store(S + r * lds + j + kLanes, acc[r][1]);
      }
    }
  }

  // acc[r] = sum_{j<n} P[r][j] * X[j]  (X rows of D floats)
  static void rows_times(const float* P, int lds, const float* X, int n, vf (&acc)[R][DV]) {
    for (int r = 0; r < R; ++r)
      for (int d = 0; d < DV; ++d) acc[r][d] = vf{};
    for (int j = 0; j < n; ++j) {
      vf x[DV];
      for (int d = 0; d < DV; ++d) x[d] = load(X + j * D + d * kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        float p = P[r * lds + j];
        for (int d = 0; d < DV; ++d) acc[r][d] += x[d] * p;
      }
    }
  }

  // Y[j] += sum_{r<R} P[r][j] * X[r] for j < n  (X: R rows of D floats)
  static void cols_times(const float* P, int lds, const float* X, int n, float* Y) {
    vf x[R][DV];
    for (int r = 0; r < R; ++r)
      for (int d = 0; d < DV; ++d) x[r][d] = load(X + r * D + d * kLanes);
    for (int j = 0; j < n; ++j) {
      vf y[DV];
      for (int d = 0; d < DV; ++d) y[d] = load(Y + j * D + d * kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        float p = P[r * lds + j];
        for (int d = 0; d < DV; ++d) y[d] += x[r][d] * p;
      }
      for (int d = 0; d < DV; ++d) store(Y + j * D + d * kLanes, y[d]);
    }
  }

  // Rows of one (sequence, head) from a (B, T, H, D) array into a (Tp, D) buffer, times scale,
  // zero-padded; and the transposed copy into (D, Tp). Whole rows are read as vectors (the
  // input rows are H * D floats apart: a scalar loop here waited on memory for a fifth of
  // the backward pass).
  static void gather(const float* x, const Dims& s, int64_t b, int64_t h, float scale, float* rows, float* cols, int Tp) {
    const int64_t rs = s.H * D;
    const float* base = x + b * s.T * rs + h * D;
    for (int t = 0; t < Tp; ++t) {
      float row[D];
      for (int d = 0; d < DV; ++d) store(row + d * kLanes, t < s.T ? load(base + t * rs + d * kLanes) * scale : vf{});
      if (rows) std::memcpy(rows + t * D, row, sizeof(row));
      if (cols)
        for (int c = 0; c < D; ++c) cols[c * Tp + t] = row[c];
    }
  }

  static void scatter(const float* rows, const Dims& s, int64_t b, int64_t h, float* x) {
    const int64_t rs = s.H * D;
    float* base = x + b * s.T * rs + h * D;
    for (int t = 0; t < s.T; ++t) std::memcpy(base + t * rs, rows + t * D, D * sizeof(float));
  }

  // Consecutive buffers carved from one per-thread allocation, reused across calls.
  struct Scratch {
    float* next;
    explicit Scratch(size_t n) {
      thread_local std::vector<float> buf;
      if (buf.size() < n) buf.assign(n, 0.f);
      next = buf.data();
    }
    float* take(size_t n) { float* p = next; next += n; return p; }
  };

  static void forward(const Dims& s, int64_t item, const float* q, const float* k, const float* v, float* o, float* lse) {
    const int64_t b = item / s.H, h = item % s.H;
    const int T = s.T, Tp = round_up(T, kKeyTile);
    const float scale = 1.f / std::sqrt(float(D));
    const size_t td = size_t(Tp) * D, rt = size_t(R) * Tp;
    Scratch buf(4 * td + rt);
    float *Q = buf.take(td), *KT = buf.take(td), *V = buf.take(td), *O = buf.take(td), *S = buf.take(rt);
    gather(q, s, b, h, scale, Q, nullptr, Tp);
    gather(k, s, b, h, 1.f, nullptr, KT, Tp);
    gather(v, s, b, h, 1.f, V, nullptr, Tp);
    float* lse_t = lse + item * T;
    const int pre = std::clamp<int>(s.prefix[b], 0, T);  // keys < pre are seen by every query
    for (int i0 = 0; i0 < T; i0 += R) {
      const int n = std::min(Tp, round_up(std::max(i0 + R, pre), kKeyTile));
      scores(Q + i0 * D, KT, Tp, n, S, Tp);
      float inv[R];
      for (int r = 0; r < R; ++r) {
        const int i = i0 + r;
        float* row = S + r * Tp;
        if (i >= T) { std::fill(row, row + n, 0.f); inv[r] = 0.f; continue; }
        const int last = std::max(i, pre - 1);  // the last key this query sees
        const int seen = round_up(last + 1, kLanes);  // <= n, a multiple of kKeyTile
        std::fill(row + last + 1, row + seen, kMasked);
        vf mv = splat(kMasked);
        for (int j = 0; j < seen; j += kLanes) { vf x = load(row + j); mv = x > mv ? x : mv; }
        const float m = hmax(mv);
        vf sv = vf{};
        for (int j = 0; j < seen; j += kLanes) { vf p = vexp(load(row + j) - m); store(row + j, p); sv += p; }
        const float sum = hsum(sv);
        std::fill(row + seen, row + n, 0.f);
        lse_t[i] = m + std::log(sum);
        inv[r] = 1.f / sum;
      }
      vf acc[R][DV];
      rows_times(S, Tp, V, n, acc);
      for (int r = 0; r < R && i0 + r < T; ++r)
        for (int d = 0; d < DV; ++d) store(O + (i0 + r) * D + d * kLanes, acc[r][d] * inv[r]);
    }
    scatter(O, s, b, h, o);
  }

  static void backward(const Dims& s, int64_t item, const float* q, const float* k, const float* v, const float* o,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv) {
    const int64_t b = item / s.H, h = item % s.H;
    const int T = s.T, Tp = round_up(T, kKeyTile);
    const float scale = 1.f / std::sqrt(float(D));
    const size_t td = size_t(Tp) * D, rt = size_t(R) * Tp;
    Scratch buf(9 * td + 2 * rt + Tp);
    float *Q = buf.take(td), *K = buf.take(td), *KT = buf.take(td), *VT = buf.take(td), *dO = buf.take(td);
    float *Ob = buf.take(td), *dQ = buf.take(td), *dK = buf.take(td), *dV = buf.take(td);
    float *P = buf.take(rt), *dS = buf.take(rt), *delta = buf.take(Tp);
    gather(q, s, b, h, scale, Q, nullptr, Tp);
    gather(k, s, b, h, 1.f, K, KT, Tp);
    gather(v, s, b, h, 1.f, nullptr, VT, Tp);
    gather(dout, s, b, h, 1.f, dO, nullptr, Tp);
    gather(o, s, b, h, 1.f, Ob, nullptr, Tp);
    std::fill(dK, dK + 2 * td, 0.f);  // dK and dV (adjacent)
    for (int t = 0; t < Tp; ++t) {
      float acc = 0.f;
      for (int c = 0; c < D; ++c) acc += dO[t * D + c] * Ob[t * D + c];
      delta[t] = acc;
    }
    const float* lse_t = lse + item * T;
    const int pre = std::clamp<int>(s.prefix[b], 0, T);
    for (int i0 = 0; i0 < T; i0 += R) {
      const int n = std::min(Tp, round_up(std::max(i0 + R, pre), kKeyTile));
      scores(Q + i0 * D, KT, Tp, n, P, Tp);
      scores(dO + i0 * D, VT, Tp, n, dS, Tp);
      for (int r = 0; r < R; ++r) {
        const int i = i0 + r;
        float* p = P + r * Tp;
        float* ds = dS + r * Tp;
        if (i >= T) { std::fill(p, p + n, 0.f); std::fill(ds, ds + n, 0.f); continue; }
        const float l = lse_t[i], dl = delta[i];
        const int last = std::max(i, pre - 1);
        const int seen = round_up(last + 1, kLanes);
        std::fill(p + last + 1, p + seen, kMasked);
        for (int j = 0; j < seen; j += kLanes) {
          const vf pj = vexp(load(p + j) - l);
          store(p + j, pj);
          store(ds + j, pj * (load(ds + j) - dl));
        }
        std::fill(p + seen, p + n, 0.f);
        std::fill(ds + seen, ds + n, 0.f);
      }
      cols_times(P, Tp, dO + i0 * D, n, dV);
      cols_times(dS, Tp, Q + i0 * D, n, dK);
      vf acc[R][DV];
      rows_times(dS, Tp, K, n, acc);
      for (int r = 0; r < R && i0 + r < T; ++r)
        for (int d = 0; d < DV; ++d) store(dQ + (i0 + r) * D + d * kLanes, acc[r][d] * scale);
    }
    scatter(dQ, s, b, h, dq);
    scatter(dK, s, b, h, dk);
    scatter(dV, s, b, h, dv);
  }
};

template <template <int> class Fn, typename... A>
ffi::Error dispatch(int64_t d, A&&... args) {
  switch (d) {
    case 16: Fn<16>::run(args...); break;
    case 32: Fn<32>::run(args...); break;
    case 64: Fn<64>::run(args...); break;
    case 128: Fn<128>::run(args...); break;
    default: return ffi::Error::InvalidArgument("causal_attention_cpu: head_dim must be 16, 32, 64 or 128");
  }
  return ffi::Error::Success();
}

template <int D>
struct Fwd {
  static void run(ffi::ThreadPool& pool, const Dims& s, const float* q, const float* k,
                  const float* v, float* o, float* lse) {
    parallel_for(pool, s.B * s.H, [&](int64_t i) { Kernel<D>::forward(s, i, q, k, v, o, lse); });
  }
};

template <int D>
struct Bwd {
  static void run(ffi::ThreadPool& pool, const Dims& s, const float* q, const float* k,
                  const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk,
                  float* dv) {
    parallel_for(pool, s.B * s.H, [&](int64_t i) { Kernel<D>::backward(s, i, q, k, v, o, lse, dout, dq, dk, dv); });
  }
};

ffi::Error FwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> prefix, ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse) {
  auto dims = q.dimensions();
  if (dims.size() != 4) return ffi::Error::InvalidArgument("causal_attention_cpu: q must be (batch, T, heads, D)");
  if (int64_t(prefix.element_count()) != dims[0])
    return ffi::Error::InvalidArgument("causal_attention_cpu: prefix must be (batch,)");
  const Dims s{dims[0], dims[1], dims[2], prefix.typed_data()};
  return dispatch<Fwd>(dims[3], pool, s, q.typed_data(), k.typed_data(),
                       v.typed_data(), o->typed_data(), lse->typed_data());
}

ffi::Error BwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> prefix, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                   ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                   ffi::ResultBuffer<ffi::F32> dv) {
  auto dims = q.dimensions();
  if (dims.size() != 4) return ffi::Error::InvalidArgument("causal_attention_cpu: q must be (batch, T, heads, D)");
  if (int64_t(prefix.element_count()) != dims[0])
    return ffi::Error::InvalidArgument("causal_attention_cpu: prefix must be (batch,)");
  const Dims s{dims[0], dims[1], dims[2], prefix.typed_data()};
  return dispatch<Bwd>(dims[3], pool, s, q.typed_data(), k.typed_data(),
                       v.typed_data(), o.typed_data(), lse.typed_data(), dout.typed_data(), dq->typed_data(),
                       dk->typed_data(), dv->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScalingCausalAttentionFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScalingCausalAttentionBwd, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
