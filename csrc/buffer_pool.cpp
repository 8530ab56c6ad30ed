// The CPU buffer pool's operators (op_signatures.h: CpuBufferPoolStats, EmptyCpuBufferPool): what
// it holds, and the release of its idle blocks -- e.g. after training, before a long evaluation
// at other sizes, or to hand the memory back to the system.
#include <torch/library.h>

#include <vector>

#include "buffer_pool.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace {

std::vector<int64_t> cpu_buffer_pool_stats() { return CpuBufferPool::get().stats(); }

void empty_cpu_buffer_pool() { CpuBufferPool::get().release_idle(); }

}  // namespace

// They take no tensor: registered for every backend.
TORCH_LIBRARY_IMPL(pyframepred, CompositeExplicitAutograd, m) {
  m.impl(op::CpuBufferPoolStats::kName, &cpu_buffer_pool_stats);
  m.impl(op::EmptyCpuBufferPool::kName, &empty_cpu_buffer_pool);
}

}  // namespace pyframepred
