// attnkit — thread_pool: the built-in executor, and the default one the CPU kernels use.
//
// Workers sleep on a condition variable between jobs, after spinning briefly (`spin`, 50 µs by
// default) for the next one: one attention call runs several jobs back to back (the tiles, the
// split-KV merge, the observer pass), and waking a sleeping thread costs tens of microseconds where
// the futex wake must first get the core scheduled (a VM above all) — on this project's 2-core VM
// the observer pass of a 32K decode step took 0.36 ms with sleeping workers and 0.30 ms with
// spinning ones. A spinning worker occupies its core only for `spin` after each job; 0 turns it
// off. A job is a type-erased pointer to the caller's item function plus an atomic counter the
// threads draw item indices from, so items of uneven cost (causal tiles near the diagonal vs. far
// from it) balance themselves. The calling thread works too, so a pool of N threads owns N - 1
// workers. Nothing is allocated per job.
//
// A call from inside an item (nested parallelism) runs serially on that thread rather than
// deadlocking; concurrent calls from several engine threads are serialized.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "attnkit/parallel/executor.hpp"

namespace attnkit {
namespace parallel {

class thread_pool {
 public:
  static constexpr std::chrono::microseconds default_spin{50};

  // threads = 0 means std::thread::hardware_concurrency().
  explicit thread_pool(std::size_t threads = 0, std::chrono::microseconds spin = default_spin)
      : spin_(spin) {
    if (threads == 0) threads = std::thread::hardware_concurrency();
    if (threads == 0) threads = 1;
    threads_ = threads;
    workers_.reserve(threads - 1);
    for (std::size_t t = 0; t + 1 < threads; ++t) workers_.emplace_back([this] { work_loop(); });
  }

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  ~thread_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  std::size_t concurrency() const noexcept { return threads_; }

  template <class Item>
  void operator()(std::size_t n, Item&& item) {
    if (n == 0) return;
    if (n == 1 || workers_.empty() || inside_item()) {
      for (std::size_t i = 0; i < n; ++i) item(i);
      return;
    }
    std::lock_guard submit(submit_mutex_);
    job current{&invoke<std::remove_reference_t<Item>>, &item, n};
    {
      std::lock_guard lock(mutex_);
      job_ = &current;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_items(current);
    {
      std::unique_lock lock(mutex_);
      done_.wait(lock, [&] { return current.finished.load(std::memory_order_acquire) == n; });
      job_ = nullptr;
      // Workers that woke late hold no reference to `current` once they see job_ == nullptr
      // under the mutex; the ones still inside run_items are counted by `active`.
      done_.wait(lock, [&] { return current.active == 0; });
    }
    if (current.failure) std::rethrow_exception(current.failure);
  }

 private:
  struct job {
    job(void (*call_)(void*, std::size_t), void* item_, std::size_t count_)
        : call(call_), item(item_), count(count_) {}
    void (*call)(void*, std::size_t);
    void* item;
    std::size_t count;
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> finished{0};
    std::size_t active = 0;  // workers inside run_items; guarded by mutex_
    std::exception_ptr failure;
    std::mutex failure_mutex;
  };

  template <class Item>
  static void invoke(void* item, std::size_t i) {
    (*static_cast<Item*>(item))(i);
  }

  static bool& inside_item() {
    thread_local bool inside = false;
    return inside;
  }

  void run_items(job& j) {
    inside_item() = true;
    for (;;) {
      const std::size_t i = j.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= j.count) break;
      try {
        j.call(j.item, i);
      } catch (...) {
        std::lock_guard lock(j.failure_mutex);
        if (!j.failure) j.failure = std::current_exception();
      }
      if (j.finished.fetch_add(1, std::memory_order_acq_rel) + 1 == j.count) {
        std::lock_guard lock(mutex_);
        done_.notify_all();
      }
    }
    inside_item() = false;
  }

  void work_loop() {
    std::size_t seen = 0;
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || (job_ != nullptr && generation_ != seen); });
      if (stopping_) return;
      seen = generation_;
      job* j = job_;
      ++j->active;
      lock.unlock();
      run_items(*j);
      lock.lock();
      if (--j->active == 0) done_.notify_all();
      if (spin_.count() > 0) {
        lock.unlock();
        spin_until_next_job(seen);
        lock.lock();
      }
    }
  }

  // Returns when a job after generation `seen` is published or `spin` has passed; the wait in
  // work_loop then decides under the mutex.
  void spin_until_next_job(std::size_t seen) const {
    const auto until = std::chrono::steady_clock::now() + spin_;
    for (unsigned i = 1;; ++i) {
      if (generation_.load(std::memory_order_acquire) != seen) return;
      if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
      __builtin_ia32_pause();
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
      asm volatile("yield");
#endif
    }
  }

  std::size_t threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::mutex submit_mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  job* job_ = nullptr;
  // Changed under mutex_; atomic so that spinning workers can read it without the mutex.
  std::atomic<std::size_t> generation_{0};
  std::chrono::microseconds spin_;
  bool stopping_ = false;
};

// The pool CPU kernels use when the caller passes no executor: hardware_concurrency() threads,
// created on first use and kept for the life of the process. Nothing starts before that call.
inline thread_pool& default_thread_pool() {
  static thread_pool pool;
  return pool;
}

}  // namespace parallel
}  // namespace attnkit
