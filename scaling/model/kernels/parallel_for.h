// parallel_for over XLA's intra-op thread pool, shared by the project's CPU FFI kernels.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace scaling_kernels {

// Runs fn(item) for item in [0, n) on the caller and up to threads - 1 tasks of the pool.
// Tasks claim items from a shared counter; the caller returns once every item is done (a
// task that starts late finds none and touches nothing but the shared counters).
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, const F& fn) {
  struct State { std::atomic<int64_t> next{0}, done{0}; };
  auto st = std::make_shared<State>();
  const F* f = &fn;
  auto work = [st, n, f]() {
    for (int64_t i; (i = st->next.fetch_add(1)) < n;) {
      (*f)(i);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work]() { work(); });
  work();
  while (st->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace scaling_kernels
