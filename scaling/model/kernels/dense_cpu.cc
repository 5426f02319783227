// The dense products of the model on a CPU: C = op(A) @ op(B) in float32, row-major, where
// op transposes when the matching attribute is nonzero, as an XLA FFI handler calling OpenBLAS's
// sgemm (the scipy-openblas32 build, whose symbols carry a scipy_ prefix). Built and registered
// by scaling/model/cpu_dense.py.
//
// Shapes: A is (M, K), or (K, M) with trans_a; B is (K, N), or (N, K) with trans_b; C is (M, N).
// OpenBLAS runs single-threaded in each call: C is cut into slabs of rows (or of columns when
// it is wider than tall), one per thread of XLA's intra-op pool, so that the product uses the
// threads XLA already has and no second pool competes with them for the cores.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>

#include "cblas.h"
#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using scaling_kernels::parallel_for;

namespace {

// Products below this many multiply-adds run on the calling thread alone.
constexpr int64_t kSerialMacs = int64_t(1) << 21;
// Slab edges fall on multiples of this many rows or columns (the sgemm kernels' tile).
constexpr int64_t kAlign = 16;

void single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { scipy_openblas_set_num_threads(1); });
}

struct Gemm {
  bool ta, tb;
  int64_t M, N, K;
  const float* a;
  const float* b;
  float* c;

  int64_t lda() const { return ta ? M : K; }
  int64_t ldb() const { return tb ? K : N; }

  // Rows [m0, m1) of C.
  void rows(int64_t m0, int64_t m1) const {
    if (m1 <= m0) return;
    const float* a0 = ta ? a + m0 : a + m0 * lda();
    scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                      blasint(m1 - m0), blasint(N), blasint(K), 1.0f, a0, blasint(lda()), b, blasint(ldb()), 0.0f,
                      c + m0 * N, blasint(N));
  }

  // Columns [n0, n1) of C.
  void cols(int64_t n0, int64_t n1) const {
    if (n1 <= n0) return;
    const float* b0 = tb ? b + n0 * ldb() : b + n0;
    scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, blasint(M),
                      blasint(n1 - n0), blasint(K), 1.0f, a, blasint(lda()), b0, blasint(ldb()), 0.0f, c + n0,
                      blasint(N));
  }
};

ffi::Error GemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                    ffi::ResultBuffer<ffi::F32> c, int32_t trans_a, int32_t trans_b) {
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2)
    return ffi::Error::InvalidArgument("dense_cpu: operands must be matrices");
  Gemm g{trans_a != 0, trans_b != 0, dc[0], dc[1], trans_a ? da[0] : da[1], a.typed_data(), b.typed_data(),
         c->typed_data()};
  if ((g.ta ? da[1] : da[0]) != g.M || (g.tb ? db[0] : db[1]) != g.N || (g.tb ? db[1] : db[0]) != g.K)
    return ffi::Error::InvalidArgument("dense_cpu: operand shapes do not match the product");
  constexpr int64_t kMax = std::numeric_limits<blasint>::max();
  if (g.M > kMax || g.N > kMax || g.K > kMax)
    return ffi::Error::InvalidArgument("dense_cpu: a dimension exceeds 32-bit BLAS indices");
  if (g.M == 0 || g.N == 0) return ffi::Error::Success();
  if (g.K == 0) {
    std::memset(g.c, 0, sizeof(float) * g.M * g.N);
    return ffi::Error::Success();
  }
  single_threaded_blas();
  const bool by_rows = g.M >= g.N;
  const int64_t extent = by_rows ? g.M : g.N;
  int64_t pieces = g.M * g.N * g.K < kSerialMacs ? 1 : std::min<int64_t>(pool.num_threads(), extent / kAlign);
  pieces = std::max<int64_t>(pieces, 1);
  const int64_t step = (extent + pieces - 1) / pieces;
  const int64_t slab = pieces == 1 ? extent : (step + kAlign - 1) / kAlign * kAlign;
  const int64_t n = (extent + slab - 1) / slab;
  auto piece = [&](int64_t i) {
    const int64_t lo = i * slab, hi = std::min(extent, lo + slab);
    by_rows ? g.rows(lo, hi) : g.cols(lo, hi);
  };
  if (n == 1)
    piece(0);
  else
    parallel_for(pool, n, piece);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScalingDenseGemm, GemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("trans_a")
                                  .Attr<int32_t>("trans_b"));
