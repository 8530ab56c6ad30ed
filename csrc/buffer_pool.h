// A small pool of the fused ConvLSTM cell's large CPU buffers, reused from one call to the next.
//
// Why: glibc's malloc returns blocks above its mmap threshold (32 MiB at most) to the kernel when
// they are freed, and trims the top of its heap above twice that, so every training step faults in
// and zeroes fresh pages for the big tensors the step allocates again: at (16, 64, 64, 64) the
// gates saved for backward and their gradient are 64 MiB each, ~16,000 page faults apiece, which
// made the op's forward+backward take 44 ms against 19 ms with a caching allocator set-up. Those
// buffers are allocated and freed in the same sizes every step, so a pool keyed by size gives
// them back without a fault.
//
// Only the tensors the fused cell and layer allocate go through it (h, c, the saved gates and the
// gradients of its backward, the layer's frames and h sequence; blocks of at least 1 MiB), through
// a c10::Allocator, so they are ordinary resizable CPU tensors. Freed blocks are kept up to a
// budget -- the idle blocks freed longest ago go back to the system first to make room for a block
// just freed: by default the most bytes the pool's blocks ever held at once (in use), so that a
// training step's working set, however large, is reused whole, while the idle blocks never
// exceed what the process needed at its peak;
// PYFRAMEPRED_CPU_BUFFER_POOL_MB sets a fixed budget instead, 0 turns the pool off. (A fixed 256
// MiB, the earlier default, let ~42 MiB a step go back and fault in afresh at (4, 64, [64],
// 64x64), T = 10, float32, where a step's pooled blocks add up to ~400 MiB.) Thread-safe
// (autograd frees from its own threads).
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

namespace pyframepred {

class CpuBufferPool final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;  // smaller blocks: malloc reuses them
  static constexpr size_t kAlignment = 64;             // as ATen's CPU allocator

  static CpuBufferPool& get() {
    static CpuBufferPool* pool = new CpuBufferPool();  // never destroyed: frees may come late
    return *pool;
  }

  // Whether the pool is on.
  bool enabled() const { return enabled_; }

  // Bytes: idle, in use, the peak in use, the budget of idle bytes (-1: the peak).
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(held_), static_cast<int64_t>(in_use_),
            static_cast<int64_t>(peak_in_use_),
            fixed_budget_ ? static_cast<int64_t>(*fixed_budget_) : int64_t{-1}};
  }

  // Frees every idle block and resets the peak to the bytes in use now.
  void release_idle() {
    std::unordered_map<size_t, std::deque<Idle>> idle;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle.swap(free_);
      held_ = 0;
      peak_in_use_ = in_use_;
    }
    for (auto& [size, blocks] : idle) {
      for (const Idle& b : blocks) std::free(b.ptr);
    }
  }

  c10::DataPtr allocate(size_t n) override {
    const size_t size = round_up(n);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back().ptr;  // the most recently freed
        it->second.pop_back();
        held_ -= size;
      }
    }
    if (p == nullptr) p = std::aligned_alloc(kAlignment, size);  // size: a multiple of a page
    TORCH_CHECK(p != nullptr, "pyframepred: out of memory allocating ", size, " bytes");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_ += size;
      peak_in_use_ = std::max(peak_in_use_, in_use_);
    }
    return {p, new Block{p, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  CpuBufferPool() {
    const char* env = std::getenv("PYFRAMEPRED_CPU_BUFFER_POOL_MB");
    if (env != nullptr && *env != '\0') {
      const long long mb = std::atoll(env);
      fixed_budget_ = mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
      enabled_ = mb > 0;
    }
  }

  static size_t round_up(size_t n) {
    constexpr size_t kPage = 4096;
    return (std::max<size_t>(n, 1) + kPage - 1) / kPage * kPage;
  }

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    get().give_back(block->ptr, block->size);
    delete block;
  }

  // Keeps the freed block where the budget allows, making room by freeing the idle blocks that
  // were given back longest ago: the blocks of the working set in use now come back at every step
  // and stay, those of an earlier one (other sizes: another model, another frame size) go.
  void give_back(void* p, size_t size) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_ -= size;
      const size_t budget = fixed_budget_ ? *fixed_budget_ : peak_in_use_;
      if (size <= budget) {
        while (held_ + size > budget) {
          auto oldest = free_.end();
          for (auto it = free_.begin(); it != free_.end(); ++it) {
            if (!it->second.empty() &&
                (oldest == free_.end() || it->second.front().stamp < oldest->second.front().stamp)) {
              oldest = it;
            }
          }
          if (oldest == free_.end()) break;
          evicted.push_back(oldest->second.front().ptr);
          oldest->second.pop_front();
          held_ -= oldest->first;
        }
        free_[size].push_back({p, clock_++});
        held_ += size;
        p = nullptr;
      }
    }
    for (void* q : evicted) std::free(q);
    if (p != nullptr) std::free(p);
  }

  struct Idle {
    void* ptr;
    uint64_t stamp;  // when it was given back (clock_)
  };

  std::mutex mutex_;
  std::unordered_map<size_t, std::deque<Idle>> free_;  // idle blocks by size, oldest first
  uint64_t clock_ = 0;
  size_t held_ = 0;         // bytes of idle blocks
  size_t in_use_ = 0;       // bytes of blocks handed out and not yet given back
  size_t peak_in_use_ = 0;  // the most in_use_ has been
  std::optional<size_t> fixed_budget_;  // PYFRAMEPRED_CPU_BUFFER_POOL_MB, where set
  bool enabled_ = true;
};

// The pool, where a buffer of `sizes` and opts' dtype comes from it: on the CPU, blocks of at least
// CpuBufferPool::kMinBytes while the pool is on and no Python dispatch mode is active; null
// otherwise. The pool makes its tensors without the dispatcher: under a mode (torch.compile's
// fake tensors, a FlopCounterMode) at::empty must run for the mode to see it, or a real tensor
// would meet the traced fake ones.
inline CpuBufferPool* pool_for(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (!opts.device().is_cpu() || c10::impl::TorchDispatchModeTLS::stack_len() > 0) return nullptr;
  CpuBufferPool& pool = CpuBufferPool::get();
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * opts.dtype().itemsize();
  return pool.enabled() && bytes >= CpuBufferPool::kMinBytes ? &pool : nullptr;
}

// at::empty(sizes, opts) for a buffer of the fused cell: from the pool where pool_for says so.
inline at::Tensor cell_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (CpuBufferPool* pool = pool_for(sizes, opts)) {
    return at::detail::empty_generic(sizes, pool, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     c10::typeMetaToScalarType(opts.dtype()), opts.memory_format_opt());
  }
  return at::empty(sizes, opts);
}

// at::empty_strided(sizes, strides, opts) for a buffer of the fused cell, from the pool where
// pool_for says so. `strides` must describe a dense layout (a permutation of a contiguous one).
inline at::Tensor cell_buffer_strided(at::IntArrayRef sizes, at::IntArrayRef strides,
                                      const at::TensorOptions& opts) {
  if (CpuBufferPool* pool = pool_for(sizes, opts)) {
    return at::detail::empty_strided_generic(sizes, strides, pool,
                                             c10::DispatchKeySet(c10::DispatchKey::CPU),
                                             c10::typeMetaToScalarType(opts.dtype()));
  }
  return at::empty_strided(sizes, strides, opts.memory_format(std::nullopt));
}

}  // namespace pyframepred
