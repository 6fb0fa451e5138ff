// kv_page_pool and kv_cache against a model: a std::vector per (cache, layer, head) of (key,
// value, position), driven by random append / append_token / retain / evict / compact / clear
// sequences. After every operation the whole cache is compared with the model through view() (the
// kernel-facing layout) and position_of(); the page accounting is exact (the pool's pages in use
// equal Σ ceil(length / page_size) over every head of every cache on it, each page owned once);
// appends the pool cannot serve must throw and leave everything as it was. Values are compared
// bit for bit: the cache only copies and converts, so there is no tolerance; conversions into
// half / bfloat16 storage must equal attnkit::half(x) / attnkit::bfloat16(x) (round to nearest
// even).
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "attnkit/core/aligned_memory.hpp"
#include "attnkit/kvcache/kv_cache.hpp"
#include "attnkit/kvcache/page_pool.hpp"
#include "support/random.hpp"

using attnkit::bfloat16;
using attnkit::half;
using attnkit::index_t;
using attnkit::kv_cache;
using attnkit::kv_cache_config;
using attnkit::kv_page_pool;
using attnkit::kv_page_pool_config;
using attnkit::page_id;
using attnkit::position;
using attnkit::tensor_view;

namespace {

// Bits of a stored element, so that comparisons are exact (and -0 differs from +0).
template <class T>
std::uint32_t bits_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<std::uint32_t>(x);
  } else {
    return x.bits;
  }
}

struct model_token {
  std::vector<std::uint32_t> key, value;  // bits of the stored (converted) elements
  position pos = 0;
};

struct model_cache {
  index_t layers = 0, kv_heads = 0, head_dim = 0;
  std::vector<std::vector<model_token>> heads;  // [layer * kv_heads + head]
  std::vector<position> next;                   // [layer * kv_heads + head]

  model_cache(index_t l, index_t h, index_t d)
      : layers(l),
        kv_heads(h),
        head_dim(d),
        heads(static_cast<std::size_t>(l * h)),
        next(static_cast<std::size_t>(l * h), 0) {}
  std::vector<model_token>& at(index_t layer, index_t head) {
    return heads[static_cast<std::size_t>(layer * kv_heads + head)];
  }
  position& next_at(index_t layer, index_t head) {
    return next[static_cast<std::size_t>(layer * kv_heads + head)];
  }
};

index_t pages_for(index_t tokens, index_t page_size) {
  return (tokens + page_size - 1) / page_size;
}

// Compares one cache with its model: every field of every view, every element and position, the
// page accounting. Returns "" or the first difference. `owner` counts, per pool page, how many
// (cache, layer, head) rows reference it (must end up 0 or 1 everywhere).
template <class T>
std::string compare(const kv_cache<T>& cache, model_cache& model, std::vector<int>& owner) {
  std::ostringstream why;
  const index_t ps = cache.page_size();
  const index_t capacity = cache.pool().capacity_pages();
  index_t pages = 0;
  for (index_t l = 0; l < cache.layers(); ++l) {
    const attnkit::paged_kv_view<const T> v = cache.view(l);
    if (v.keys != cache.pool().keys() || v.values != cache.pool().values() ||
        v.positions != cache.pool().positions() || v.kv_heads != cache.kv_heads() ||
        v.head_dim != cache.head_dim() || v.page_size != ps || v.row_stride != cache.head_dim() ||
        v.page_stride != ps * cache.head_dim() || v.head_stride != 0 || v.lengths == nullptr) {
      why << "layer " << l << ": a view field is wrong";
      return why.str();
    }
    for (index_t h = 0; h < cache.kv_heads(); ++h) {
      const auto& tokens = model.at(l, h);
      const auto n = static_cast<index_t>(tokens.size());
      if (v.length(h) != n || cache.length(l, h) != n) {
        why << "layer " << l << " head " << h << ": length " << v.length(h) << " / "
            << cache.length(l, h) << ", model " << n;
        return why.str();
      }
      if (cache.next_position(l, h) != model.next_at(l, h)) {
        why << "layer " << l << " head " << h << ": next_position " << cache.next_position(l, h)
            << ", model " << model.next_at(l, h);
        return why.str();
      }
      const index_t head_pages = pages_for(n, ps);
      pages += head_pages;
      if (head_pages > v.page_table_stride) {
        why << "layer " << l << " head " << h << ": " << head_pages
            << " pages but page_table_stride " << v.page_table_stride;
        return why.str();
      }
      for (index_t p = 0; p < head_pages; ++p) {
        const page_id page = v.page_table[h * v.page_table_stride + p];
        if (page < 0 || page >= capacity) {
          why << "layer " << l << " head " << h << ": page " << page << " out of range";
          return why.str();
        }
        ++owner[static_cast<std::size_t>(page)];
      }
      for (index_t s = 0; s < n; ++s) {
        const model_token& want = tokens[static_cast<std::size_t>(s)];
        const T* key = v.key(h, s);
        const T* value = v.value(h, s);
        for (index_t d = 0; d < cache.head_dim(); ++d) {
          if (bits_of(key[d]) != want.key[static_cast<std::size_t>(d)] ||
              bits_of(value[d]) != want.value[static_cast<std::size_t>(d)]) {
            why << "layer " << l << " head " << h << " slot " << s << " dim " << d
                << ": stored key/value " << static_cast<float>(key[d]) << "/"
                << static_cast<float>(value[d]) << " differ from the model";
            return why.str();
          }
        }
        if (v.position_of(h, s) != want.pos || cache.position_of(l, h, s) != want.pos) {
          why << "layer " << l << " head " << h << " slot " << s << ": position "
              << cache.position_of(l, h, s) << ", model " << want.pos;
          return why.str();
        }
      }
      // Rows past the length in the last page: finite (zeros or evicted tokens), never garbage.
      for (index_t s = n; s < head_pages * ps; ++s)
        for (index_t d = 0; d < cache.head_dim(); ++d)
          if (!std::isfinite(static_cast<float>(v.key(h, s)[d])) ||
              !std::isfinite(static_cast<float>(v.value(h, s)[d]))) {
            why << "layer " << l << " head " << h << " tail slot " << s << " is not finite";
            return why.str();
          }
    }
  }
  if (cache.pages_held() != pages ||
      cache.bytes_used() != static_cast<std::size_t>(pages) * cache.pool().bytes_per_page()) {
    why << "pages_held " << cache.pages_held() << " bytes_used " << cache.bytes_used() << ", model "
        << pages << " pages";
    return why.str();
  }
  return "";
}

// Every cache on one pool against its model, and the pool's accounting against all of them.
template <class T>
std::string compare_all(const kv_page_pool<T>& pool, const std::vector<const kv_cache<T>*>& caches,
                        std::vector<model_cache*> models) {
  std::vector<int> owner(static_cast<std::size_t>(pool.capacity_pages()), 0);
  index_t held = 0;
  for (std::size_t c = 0; c < caches.size(); ++c) {
    const std::string why = compare(*caches[c], *models[c], owner);
    if (!why.empty()) return "cache " + std::to_string(c) + ": " + why;
    held += caches[c]->pages_held();
  }
  for (std::size_t p = 0; p < owner.size(); ++p)
    if (owner[p] > 1) return "page " + std::to_string(p) + " is referenced twice";
  if (pool.pages_in_use() != held)
    return "pool pages_in_use " + std::to_string(pool.pages_in_use()) + " but caches hold " +
           std::to_string(held);
  if (pool.free_pages() != pool.capacity_pages() - held) return "pool free_pages is wrong";
  if (pool.bytes_used() != static_cast<std::size_t>(held) * pool.bytes_per_page())
    return "pool bytes_used is wrong";
  return "";
}

// Random [tokens, kv_heads, head_dim] inputs of type U in one of three layouts (NHD, BHSD, padded
// rows with element stride 2), so the cache reads through the strides.
template <class U>
struct random_tokens {
  std::vector<U> k_data, v_data;
  tensor_view<const U, 3> k, v;

  random_tokens(attnkit_test::rng& rng, index_t tokens, index_t heads, index_t dim) {
    const auto layout = rng.integer(0, 2);
    const index_t elements = tokens * heads * dim * (layout == 2 ? 2 : 1);
    k_data.resize(static_cast<std::size_t>(elements));
    v_data.resize(static_cast<std::size_t>(elements));
    for (auto& x : k_data) x = attnkit::from_float<U>(static_cast<float>(rng.normal()));
    for (auto& x : v_data) x = attnkit::from_float<U>(static_cast<float>(rng.normal()));
    std::array<index_t, 3> strides{heads * dim, dim, 1};       // NHD
    if (layout == 1) strides = {dim, tokens * dim, 1};         // BHSD
    if (layout == 2) strides = {heads * dim * 2, dim * 2, 2};  // every other element
    k = tensor_view<const U, 3>(k_data.data(), {tokens, heads, dim}, strides);
    v = tensor_view<const U, 3>(v_data.data(), {tokens, heads, dim}, strides);
  }
};

template <class T, class U>
std::uint32_t stored_bits(U x) {
  return bits_of(attnkit::from_float<T>(attnkit::to_float(x)));
}

// One random operation on cache c, mirrored in its model when it succeeds. An append the pool
// cannot serve must throw and change nothing (the caller compares everything afterwards).
template <class T, class U>
void random_operation(attnkit_test::rng& rng, kv_page_pool<T>& pool, kv_cache<T>& cache,
                      model_cache& model) {
  const index_t ps = cache.page_size();
  const index_t layer = rng.integer(0, cache.layers() - 1);
  const index_t head = rng.integer(0, cache.kv_heads() - 1);
  auto& tokens = model.at(layer, head);
  const auto n = static_cast<index_t>(tokens.size());
  const auto op = rng.integer(0, 99);
  if (op < 35) {  // append to every head of the layer
    // Mostly short appends (decode steps, chunks); now and then a long one (a prompt of several
    // pages, also for page_size 256).
    const index_t longest = rng.integer(0, 9) == 0 ? 2 * ps + 3 : std::min<index_t>(2 * ps + 3, 40);
    const index_t count = rng.integer(0, longest);
    random_tokens<U> in(rng, count, cache.kv_heads(), cache.head_dim());
    std::optional<std::vector<position>> explicit_positions;
    if (rng.integer(0, 3) == 0) {
      explicit_positions.emplace();
      for (index_t t = 0; t < count; ++t) explicit_positions->push_back(rng.integer(0, 1000));
    }
    index_t needed = 0;
    for (index_t h = 0; h < cache.kv_heads(); ++h) {
      const auto len = static_cast<index_t>(model.at(layer, h).size());
      needed += pages_for(len + count, ps) - pages_for(len, ps);
    }
    const bool fits = needed <= pool.free_pages();
    try {
      if (explicit_positions)
        cache.append(layer, in.k, in.v, std::span<const position>(*explicit_positions));
      else
        cache.append(layer, in.k, in.v);
    } catch (const attnkit::error& e) {
      INFO(e.what());
      REQUIRE_FALSE(fits);
      REQUIRE(std::string(e.what()).find("attnkit::kv_cache::append") != std::string::npos);
      return;
    }
    REQUIRE(fits);
    for (index_t h = 0; h < cache.kv_heads(); ++h) {
      position& next = model.next_at(layer, h);
      position largest = next - 1;
      for (index_t t = 0; t < count; ++t) {
        model_token token;
        for (index_t d = 0; d < cache.head_dim(); ++d) {
          token.key.push_back(stored_bits<T>(in.k(t, h, d)));
          token.value.push_back(stored_bits<T>(in.v(t, h, d)));
        }
        token.pos =
            explicit_positions ? (*explicit_positions)[static_cast<std::size_t>(t)] : next + t;
        largest = std::max(largest, token.pos);
        model.at(layer, h).push_back(std::move(token));
      }
      next = largest + 1;
    }
  } else if (op < 50) {  // one token into one head
    std::vector<U> key(static_cast<std::size_t>(cache.head_dim()));
    std::vector<U> value(key.size());
    for (auto& x : key) x = attnkit::from_float<U>(static_cast<float>(rng.normal()));
    for (auto& x : value) x = attnkit::from_float<U>(static_cast<float>(rng.normal()));
    const position pos = rng.integer(0, 1) ? model.next_at(layer, head) : rng.integer(0, 500);
    const bool fits = n % ps != 0 || pool.free_pages() >= 1;
    try {
      cache.append_token(layer, head, std::span<const U>(key), std::span<const U>(value), pos);
    } catch (const attnkit::error& e) {
      INFO(e.what());
      REQUIRE_FALSE(fits);
      return;
    }
    REQUIRE(fits);
    model_token token;
    for (std::size_t d = 0; d < key.size(); ++d) {
      token.key.push_back(stored_bits<T>(key[d]));
      token.value.push_back(stored_bits<T>(value[d]));
    }
    token.pos = pos;
    tokens.push_back(std::move(token));
    model.next_at(layer, head) = std::max(model.next_at(layer, head), pos + 1);
  } else if (op < 70) {  // retain a random subset
    const double keep_probability = rng.uniform();
    std::vector<index_t> keep;
    for (index_t s = 0; s < n; ++s)
      if (rng.uniform() < keep_probability) keep.push_back(s);
    if (rng.integer(0, 1) == 0) {
      cache.retain(layer, head, keep);
    } else {  // the same as runs, some of them cut in two (runs need not be maximal)
      std::vector<attnkit::slot_run> runs;
      for (const index_t s : keep) {
        if (!runs.empty() && runs.back().end == s && rng.integer(0, 3) != 0)
          runs.back().end = s + 1;
        else
          runs.push_back({s, s + 1});
      }
      cache.retain(layer, head, std::span<const attnkit::slot_run>(runs));
    }
    std::vector<model_token> kept;
    for (const index_t s : keep) kept.push_back(tokens[static_cast<std::size_t>(s)]);
    tokens = std::move(kept);
  } else if (op < 90) {  // evict a random subset (often a prefix or suffix, as policies do)
    std::vector<index_t> slots;
    const auto shape = rng.integer(0, 2);
    const index_t cut = n == 0 ? 0 : rng.integer(0, n);
    for (index_t s = 0; s < n; ++s) {
      const bool evicted = shape == 0 ? rng.uniform() < 0.4 : shape == 1 ? s < cut : s >= cut;
      if (evicted) slots.push_back(s);
    }
    cache.evict(layer, head, slots);
    std::vector<model_token> kept;
    std::size_t next_evicted = 0;
    for (index_t s = 0; s < n; ++s) {
      if (next_evicted < slots.size() && slots[next_evicted] == s) {
        ++next_evicted;
        continue;
      }
      kept.push_back(tokens[static_cast<std::size_t>(s)]);
    }
    tokens = std::move(kept);
  } else if (op < 97) {
    cache.compact();
  } else {
    cache.clear();
    for (auto& head_tokens : model.heads) head_tokens.clear();
    std::fill(model.next.begin(), model.next.end(), 0);
  }
}

// Random operations on `count` caches over one shared pool, compared after every operation.
template <class T, class U>
void run_random(std::uint64_t seed, index_t page_size, index_t capacity, int operations,
                int count) {
  INFO("storage " << attnkit::type_name<T>() << ", input " << attnkit::type_name<U>()
                  << ", page_size " << page_size << ", seed " << seed);
  attnkit_test::rng rng(seed);
  const index_t head_dim = rng.integer(1, 9);
  auto pool = std::make_shared<kv_page_pool<T>>(kv_page_pool_config{capacity, page_size, head_dim});
  // Free pages hold whatever their last owner left; make that NaN, so a cache that exposed an
  // unwritten row of a fresh page (instead of zeroing the tail) fails the finiteness check.
  const T nan = attnkit::from_float<T>(std::numeric_limits<float>::quiet_NaN());
  std::fill_n(pool->keys(), capacity * pool->page_stride(), nan);
  std::fill_n(pool->values(), capacity * pool->page_stride(), nan);
  std::vector<kv_cache<T>> caches;
  std::vector<model_cache> models;
  for (int c = 0; c < count; ++c) {
    const kv_cache_config config{rng.integer(1, 3), rng.integer(1, 4), head_dim, page_size, 0};
    caches.emplace_back(config, pool);
    models.emplace_back(config.layers, config.kv_heads, head_dim);
  }
  std::vector<const kv_cache<T>*> cache_ptrs;
  std::vector<model_cache*> model_ptrs;
  for (int c = 0; c < count; ++c) {
    cache_ptrs.push_back(&caches[static_cast<std::size_t>(c)]);
    model_ptrs.push_back(&models[static_cast<std::size_t>(c)]);
  }
  for (int i = 0; i < operations; ++i) {
    const auto c = static_cast<std::size_t>(rng.integer(0, count - 1));
    random_operation<T, U>(rng, *pool, caches[c], models[c]);
    const std::string why = compare_all(*pool, cache_ptrs, model_ptrs);
    INFO("after operation " << i << " on cache " << c);
    REQUIRE(why.empty());
  }
  // Destroying a cache returns all its pages to the pool.
  const index_t held_by_last = caches.back().pages_held();
  const index_t in_use = pool->pages_in_use();
  caches.pop_back();
  CHECK(pool->pages_in_use() == in_use - held_by_last);
}

}  // namespace

TEST_CASE("kv_cache: random operations match the model (float)", "[kv_cache]") {
  for (const index_t page_size : {1, 3, 16, 256}) {
    // Capacity small enough that some appends run out of pages and must change nothing.
    const index_t capacity = page_size == 256 ? 16 : page_size == 16 ? 30 : 80;
    run_random<float, float>(11 + static_cast<std::uint64_t>(page_size), page_size, capacity, 600,
                             1);
  }
}

TEST_CASE("kv_cache: random operations on half and bfloat16 storage", "[kv_cache]") {
  for (const index_t page_size : {1, 3, 16}) {
    const auto seed = 101 + static_cast<std::uint64_t>(page_size);
    run_random<half, float>(seed, page_size, 60, 200, 1);
    run_random<bfloat16, float>(seed, page_size, 60, 200, 1);
    run_random<half, bfloat16>(seed, page_size, 60, 150, 1);
    run_random<bfloat16, half>(seed, page_size, 60, 150, 1);
    run_random<half, half>(seed, page_size, 60, 150, 1);
    run_random<float, half>(seed, page_size, 60, 150, 1);
  }
}

TEST_CASE("kv_cache: caches sharing one pool", "[kv_cache]") {
  for (const index_t page_size : {1, 3, 16, 256}) {
    const index_t capacity = page_size == 256 ? 14 : 50;
    run_random<float, float>(201 + static_cast<std::uint64_t>(page_size), page_size, capacity, 400,
                             3);
    run_random<half, float>(301 + static_cast<std::uint64_t>(page_size), page_size, capacity, 200,
                            2);
  }
}

TEST_CASE("kv_cache: pages one sequence evicts serve another's growth", "[kv_cache]") {
  const index_t ps = 4, dim = 2;
  auto pool = std::make_shared<kv_page_pool<float>>(kv_page_pool_config{6, ps, dim});
  kv_cache<float> a({1, 2, dim, ps, 0}, pool);
  kv_cache<float> b({2, 1, dim, ps, 0}, pool);
  std::vector<float> data(12 * 2 * dim, 1.0f);
  a.append(0, tensor_view<const float, 3>(data.data(), {12, 2, dim}),
           tensor_view<const float, 3>(data.data(), {12, 2, dim}));
  CHECK(pool->pages_in_use() == 6);
  CHECK(pool->free_pages() == 0);
  const tensor_view<const float, 3> one(data.data(), {1, 1, dim});
  CHECK_THROWS_AS(b.append(0, one, one), attnkit::error);
  CHECK(b.length(0, 0) == 0);
  // Head 1 of `a` keeps its last 3 tokens: 2 of its 3 pages go back to the pool.
  a.retain(0, 1, std::vector<index_t>{9, 10, 11});
  CHECK(a.pages_held() == 4);
  CHECK(a.bytes_used() == 4 * pool->bytes_per_page());
  CHECK(a.position_of(0, 1, 0) == 9);
  CHECK(a.next_position(0, 1) == 12);  // independent of evictions
  b.append(0, one, one);
  b.append(1, one, one);
  CHECK(pool->pages_in_use() == 6);
  CHECK_THROWS_AS(b.append(1, tensor_view<const float, 3>(data.data(), {4, 1, dim}),
                           tensor_view<const float, 3>(data.data(), {4, 1, dim})),
                  attnkit::error);
  CHECK(b.length(1, 0) == 1);
  CHECK(b.bytes_used() == 2 * pool->bytes_per_page());
}

TEST_CASE("kv_cache: bytes_used follows each head's tokens, not the longest head", "[kv_cache]") {
  const index_t ps = 16, dim = 8, heads = 4;
  kv_cache<half> cache({1, heads, dim, ps, 1000});
  std::vector<float> data(static_cast<std::size_t>(1024 * heads * dim), 0.5f);
  const tensor_view<const float, 3> kv(data.data(), {1024, heads, dim});
  cache.append(0, kv, kv);
  const std::size_t page_bytes = cache.pool().bytes_per_page();
  CHECK(page_bytes == static_cast<std::size_t>(ps) * (2 * dim * sizeof(half) + sizeof(position)));
  CHECK(cache.bytes_used() == 4 * 64 * page_bytes);
  // Head 0 keeps everything, heads 1..3 keep 100 (a head-wise budget): 64 + 3 * 7 pages.
  std::vector<index_t> recent(100);
  for (index_t i = 0; i < 100; ++i) recent[static_cast<std::size_t>(i)] = 924 + i;
  for (index_t h = 1; h < heads; ++h) cache.retain(0, h, recent);
  CHECK(cache.bytes_used() == (64 + 3 * 7) * page_bytes);
  CHECK(cache.pool().pages_in_use() == 64 + 3 * 7);
  // compact() moves no token: the stride shrinks only once the longest head shrinks.
  const std::size_t metadata = cache.metadata_bytes();
  cache.compact();
  CHECK(cache.view(0).page_table_stride == 64);
  cache.retain(0, 0, recent);
  cache.compact();
  CHECK(cache.view(0).page_table_stride == 7);
  CHECK(cache.metadata_bytes() < metadata);
  CHECK(cache.bytes_used() == 4 * 7 * page_bytes);
  for (index_t h = 0; h < heads; ++h) CHECK(cache.position_of(0, h, 0) == 924);
  cache.clear();
  CHECK(cache.bytes_used() == 0);
  CHECK(cache.pool().pages_in_use() == 0);
  CHECK(cache.next_position(0, 0) == 0);
}

TEST_CASE("kv_cache: narrowing to half / bfloat16 rounds to nearest even", "[kv_cache]") {
  // Ties and near-ties at each format's precision, plus values that over- and underflow half.
  const std::vector<float> inputs = {1.0f + 0x1.0p-11f,
                                     1.0f + 0x3.0p-11f,
                                     1.0f + 0x1.0p-8f,
                                     1.0f + 0x3.0p-8f,
                                     -1.0f - 0x1.0p-11f,
                                     65519.0f,
                                     65520.0f,
                                     1e-8f,
                                     0x1.0p-25f,
                                     3.14159265f,
                                     -0.0f,
                                     1.0f + 0x1.8p-9f};
  const auto dim = static_cast<index_t>(inputs.size());
  const tensor_view<const float, 3> kv(inputs.data(), {1, 1, dim});
  kv_cache<half> h16({1, 1, dim, 3, 4});
  kv_cache<bfloat16> b16({1, 1, dim, 3, 4});
  h16.append(0, kv, kv);
  b16.append(0, kv, kv);
  for (index_t d = 0; d < dim; ++d) {
    const float x = inputs[static_cast<std::size_t>(d)];
    INFO("x = " << x);
    CHECK(h16.view(0).key(0, 0)[d].bits == half(x).bits);
    CHECK(h16.view(0).value(0, 0)[d].bits == half(x).bits);
    CHECK(b16.view(0).key(0, 0)[d].bits == bfloat16(x).bits);
  }
  // append_token converts the same way.
  h16.append_token<float>(0, 0, inputs, inputs, 7);
  for (index_t d = 0; d < dim; ++d)
    CHECK(h16.view(0).key(0, 1)[d].bits == half(inputs[static_cast<std::size_t>(d)]).bits);
}

TEST_CASE("kv_cache: positions continue from one past the largest appended", "[kv_cache]") {
  kv_cache<float> cache({1, 2, 1, 2, 16});
  std::vector<float> data(8, 0.0f);
  const tensor_view<const float, 3> two(data.data(), {2, 2, 1});
  cache.append(0, two, two);  // positions 0, 1
  CHECK(cache.next_position(0, 0) == 2);
  cache.append(0, two, two, std::vector<position>{40, 41});
  CHECK(cache.next_position(0, 1) == 42);
  cache.append_token<float>(0, 0, std::vector<float>{1.0f}, std::vector<float>{1.0f}, 5);
  CHECK(cache.next_position(0, 0) == 42);  // re-inserting an old position does not go back
  CHECK(cache.next_position(0, 1) == 42);
  cache.evict(0, 0, std::vector<index_t>{2, 3, 4});
  CHECK(cache.next_position(0, 0) == 42);
  cache.append(0, two, two);
  CHECK(cache.position_of(0, 0, 2) == 42);
  CHECK(cache.position_of(0, 0, 3) == 43);
  CHECK(cache.position_of(0, 1, 4) == 42);
  CHECK(cache.length(0, 0) == 4);
  CHECK(cache.length(0, 1) == 6);
}

TEST_CASE("kv_cache: a merged key follows its slot through retain and evict", "[kv_cache]") {
  using attnkit::merged_key;
  using Catch::Contains;
  kv_cache<float> cache({2, 2, 1, 4, 16});
  std::vector<float> data(2 * 10, 0.0f);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  const tensor_view<const float, 3> ten(data.data(), {10, 2, 1});
  cache.append(0, ten, ten);
  cache.append(1, ten, ten);
  CHECK(cache.view(0).merged_keys == nullptr);  // no marks: the kernels skip the table
  CHECK(cache.merged(0, 1).slot == -1);

  cache.set_merged(0, 1, {6, 12.0f});
  const attnkit::paged_kv_view<const float> view = cache.view(0);
  REQUIRE(view.merged_keys != nullptr);
  CHECK(view.merged(0).slot == -1);
  CHECK(view.merged(1).slot == 6);
  CHECK(view.merged(1).count == 12.0f);
  CHECK(cache.view(1).merged_keys == nullptr);  // per layer

  // retain renumbers the mark with its slot and drops it with its slot.
  cache.retain(0, 1, std::vector<index_t>{0, 2, 6, 9});
  CHECK(cache.merged(0, 1).slot == 2);
  CHECK(cache.merged(0, 1).count == 12.0f);
  CHECK(cache.view(0).key(1, 2)[0] == data[6 * 2 + 1]);
  cache.retain(0, 0, std::vector<index_t>{1, 2});  // another head: unchanged
  CHECK(cache.merged(0, 1).slot == 2);
  // Appends leave it; evict counts the evicted slots before it.
  cache.append(0, ten, ten);
  cache.evict(0, 1, std::vector<index_t>{0, 1, 5});
  CHECK(cache.merged(0, 1).slot == 0);
  CHECK(cache.view(0).key(1, 0)[0] == data[6 * 2 + 1]);
  cache.evict(0, 1, std::vector<index_t>{0});
  CHECK(cache.merged(0, 1).slot == -1);
  CHECK(cache.view(0).merged_keys == nullptr);

  cache.set_merged(1, 0, {9, 2.5f});
  cache.set_merged(1, 1, {0, 3.0f});
  cache.retain(1, 0, std::vector<index_t>{0, 1});
  CHECK(cache.merged(1, 0).slot == -1);
  CHECK(cache.view(1).merged_keys != nullptr);  // head 1 still has one
  cache.set_merged(1, 1, {-1, 1.0f});
  CHECK(cache.view(1).merged_keys == nullptr);
  // The same through runs: the mark on slot 5 of runs [2, 4) and [5, 7) lands on slot 2.
  using runs = std::vector<attnkit::slot_run>;
  cache.set_merged(1, 1, {5, 3.0f});
  cache.retain(1, 1, runs{{2, 4}, {5, 7}});
  CHECK(cache.merged(1, 1).slot == 2);
  CHECK(cache.merged(1, 1).count == 3.0f);
  CHECK(cache.view(1).key(1, 2)[0] == data[5 * 2 + 1]);
  cache.retain(1, 1, runs{{0, 2}, {3, 4}});
  CHECK(cache.merged(1, 1).slot == -1);
  CHECK(cache.view(1).merged_keys == nullptr);
  cache.append(1, ten, ten);
  cache.set_merged(1, 1, {3, 4.0f});
  cache.clear();
  CHECK(cache.merged(1, 1).slot == -1);
  CHECK(cache.view(1).merged_keys == nullptr);

  // Errors name the argument and change nothing.
  cache.append(0, ten, ten);
  cache.set_merged(0, 0, {4, 2.0f});
  CHECK_THROWS_WITH(cache.set_merged(0, 0, {10, 2.0f}),
                    Contains("attnkit::kv_cache::set_merged: key.slot is 10 but head 0 of layer 0 "
                             "holds 10 tokens"));
  CHECK_THROWS_WITH(cache.set_merged(0, 0, {-2, 2.0f}), Contains("key.slot is -2"));
  CHECK_THROWS_WITH(cache.set_merged(0, 0, {1, 0.0f}),
                    Contains("key.count is 0, it must be finite and > 0"));
  CHECK_THROWS_WITH(cache.set_merged(0, 0, {1, std::numeric_limits<float>::quiet_NaN()}),
                    Contains("key.count is nan"));
  CHECK_THROWS_WITH(cache.set_merged(0, 2, {1, 2.0f}), Contains("head is 2"));
  CHECK_THROWS_WITH(cache.merged(2, 0), Contains("layer is 2"));
  CHECK(cache.merged(0, 0).slot == 4);
  CHECK(cache.merged(0, 0).count == 2.0f);
}

TEST_CASE("kv_cache: move keeps the pages, the moved-from cache holds none", "[kv_cache]") {
  auto pool = std::make_shared<kv_page_pool<float>>(kv_page_pool_config{8, 2, 1});
  std::vector<float> data(6, 1.0f);
  const tensor_view<const float, 3> kv(data.data(), {3, 2, 1});
  kv_cache<float> a({1, 2, 1, 2, 0}, pool);
  a.append(0, kv, kv);
  kv_cache<float> b(std::move(a));
  CHECK(b.pages_held() == 4);
  CHECK(a.pages_held() == 0);  // NOLINT(bugprone-use-after-move): documented state
  CHECK(a.bytes_used() == 0);
  kv_cache<float> c({1, 2, 1, 2, 0}, pool);
  c.append(0, kv, kv);
  CHECK(pool->pages_in_use() == 8);
  c = std::move(b);  // c's own pages go back first
  CHECK(pool->pages_in_use() == 4);
  CHECK(c.length(0, 1) == 3);
}

TEST_CASE("kv_cache: two threads grow caches on one pool", "[kv_cache]") {
  auto pool = std::make_shared<kv_page_pool<float>>(kv_page_pool_config{2000, 3, 4});
  std::vector<float> data(2 * 4, 0.25f);
  const tensor_view<const float, 3> token(data.data(), {1, 2, 4});
  std::vector<kv_cache<float>> caches;
  caches.emplace_back(kv_cache_config{2, 2, 4, 3, 0}, pool);
  caches.emplace_back(kv_cache_config{2, 2, 4, 3, 0}, pool);
  auto work = [&](kv_cache<float>& cache) {
    for (int i = 0; i < 600; ++i) {
      cache.append(i % 2, token, token);
      if (i % 50 == 49) cache.retain(i % 2, 0, std::vector<index_t>{0, 1, 2, 3});
    }
  };
  std::thread t0(work, std::ref(caches[0]));
  std::thread t1(work, std::ref(caches[1]));
  t0.join();
  t1.join();
  index_t expected = 0;
  for (const auto& cache : caches)
    for (index_t l = 0; l < 2; ++l)
      for (index_t h = 0; h < 2; ++h) expected += pages_for(cache.length(l, h), 3);
  CHECK(pool->pages_in_use() == expected);
  CHECK(caches[0].length(1, 1) == 300);
  CHECK(caches[0].length(1, 0) == 4);  // the last operation retained 4
}

TEST_CASE("kv_page_pool: allocation is all or nothing, releases are checked", "[kv_cache]") {
  kv_page_pool<half> pool({5, 3, 4});
  CHECK(pool.capacity_pages() == 5);
  CHECK(pool.bytes_per_page() == 3 * (2 * 4 * sizeof(half) + sizeof(position)));
  CHECK(pool.bytes_reserved() == 5 * pool.bytes_per_page());
  std::vector<page_id> three(3), four(4);
  pool.allocate(three);
  CHECK(three == std::vector<page_id>{0, 1, 2});  // lowest ids first
  CHECK(pool.pages_in_use() == 3);
  CHECK_FALSE(pool.try_allocate(four));
  CHECK_THROWS_WITH(pool.allocate(four),
                    Catch::Contains("attnkit::kv_page_pool::allocate: 4 pages requested") &&
                        Catch::Contains("only 2 of 5 are free"));
  CHECK(pool.pages_in_use() == 3);
  CHECK_THROWS_WITH(pool.release(std::vector<page_id>{1, 7}),
                    Catch::Contains("attnkit::kv_page_pool::release: pages[1] is 7") &&
                        Catch::Contains("not a page of this pool"));
  CHECK_THROWS_WITH(pool.release(std::vector<page_id>{1, 1}),
                    Catch::Contains("pages[1] is 1, which is not allocated"));
  CHECK_THROWS_WITH(pool.release(3), Catch::Contains("pages[0] is 3, which is not allocated"));
  CHECK_THROWS_WITH(pool.release(-1), Catch::Contains("not a page of this pool"));
  CHECK(pool.pages_in_use() == 3);  // failed releases released nothing
  pool.release(std::vector<page_id>{2, 0});
  CHECK(pool.pages_in_use() == 1);
  CHECK(pool.allocate() == 0);  // the page released last is reused first
  CHECK(pool.allocate() == 2);
  CHECK(pool.allocate() == 3);

  CHECK_THROWS_WITH(kv_page_pool<float>({4, 0, 8}),
                    Catch::Contains("attnkit::kv_page_pool: page_size is 0"));
  CHECK_THROWS_WITH(kv_page_pool<float>({4, 257, 8}), Catch::Contains("page_size is 257"));
  CHECK_THROWS_WITH(kv_page_pool<float>({4, 16, 0}), Catch::Contains("head_dim is 0"));
  CHECK_THROWS_WITH(kv_page_pool<float>({-1, 16, 8}), Catch::Contains("capacity_pages is -1"));
  CHECK_THROWS_WITH(kv_page_pool<float>({index_t{1} << 32, 16, 8}),
                    Catch::Contains("page ids are 32-bit"));
  CHECK_THROWS_WITH(kv_page_pool<float>({index_t{1} << 30, 256, index_t{1} << 40}),
                    Catch::Contains("overflows"));
  kv_page_pool<float> empty({0, 16, 8});
  CHECK_FALSE(empty.try_allocate(three));
}

TEST_CASE("kv_cache: invalid arguments throw, name the problem and change nothing", "[kv_cache]") {
  using Catch::Contains;
  // Configs.
  CHECK_THROWS_WITH(kv_cache<float>({0, 2, 4, 16, 8}),
                    Contains("attnkit::kv_cache: config.layers is 0"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 0, 4, 16, 8}), Contains("config.kv_heads is 0"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, -4, 16, 8}), Contains("config.head_dim is -4"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, 4, 0, 8}), Contains("config.page_size is 0"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, 4, 300, 8}), Contains("config.page_size is 300"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, 4, 16, 0}), Contains("config.capacity_pages is 0"));
  auto pool = std::make_shared<kv_page_pool<float>>(kv_page_pool_config{20, 3, 4});
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, 4, 3, 0}, nullptr), Contains("shared pool is null"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, 4, 16, 0}, pool),
                    Contains("config.page_size is 16 but the pool's page_size is 3"));
  CHECK_THROWS_WITH(kv_cache<float>({1, 2, 8, 3, 0}, pool),
                    Contains("config.head_dim is 8 but the pool's head_dim is 4"));

  // A cache with some content; every failed call below must leave it (and the pool) as it is.
  kv_cache<float> cache({2, 2, 4, 3, 0}, pool);
  model_cache model(2, 2, 4);
  attnkit_test::rng rng(7);
  for (int i = 0; i < 6; ++i) random_operation<float, float>(rng, *pool, cache, model);
  {
    random_tokens<float> in(rng, 5, 2, 4);
    cache.append(1, in.k, in.v);
    for (index_t h = 0; h < 2; ++h)
      for (index_t t = 0; t < 5; ++t) {
        model_token token;
        for (index_t d = 0; d < 4; ++d) {
          token.key.push_back(bits_of(in.k(t, h, d)));
          token.value.push_back(bits_of(in.v(t, h, d)));
        }
        token.pos = model.next_at(1, h)++;
        model.at(1, h).push_back(token);
      }
  }
  auto unchanged = [&] {
    std::vector<int> owner(20, 0);
    const std::string why = compare(cache, model, owner);
    INFO(why);
    REQUIRE(why.empty());
    REQUIRE(pool->pages_in_use() == cache.pages_held());
  };
  unchanged();
  const index_t n = cache.length(1, 0);
  REQUIRE(n >= 5);

  std::vector<float> data(64, 1.0f);
  const tensor_view<const float, 3> good(data.data(), {2, 2, 4});
  // Layer and head ranges, in every function that takes them.
  CHECK_THROWS_WITH(cache.view(2),
                    Contains("attnkit::kv_cache::view: layer is 2, the cache has 2"));
  CHECK_THROWS_WITH(cache.length(-1, 0), Contains("attnkit::kv_cache::length: layer is -1"));
  CHECK_THROWS_WITH(cache.length(0, 2),
                    Contains("attnkit::kv_cache::length: head is 2, the cache has 2 kv_heads"));
  CHECK_THROWS_WITH(cache.next_position(0, -1), Contains("next_position: head is -1"));
  CHECK_THROWS_WITH(cache.position_of(1, 0, n),
                    Contains("attnkit::kv_cache::position_of: slot is " + std::to_string(n) +
                             " but head 0 of layer 1 holds " + std::to_string(n) + " tokens"));
  CHECK_THROWS_WITH(cache.position_of(1, 0, -1), Contains("slot is -1"));
  CHECK_THROWS_WITH(cache.append(5, good, good), Contains("attnkit::kv_cache::append: layer is 5"));
  // Shapes.
  const tensor_view<const float, 3> three_heads(data.data(), {2, 3, 4});
  const tensor_view<const float, 3> dim5(data.data(), {2, 2, 5});
  const tensor_view<const float, 3> one_token(data.data(), {1, 2, 4});
  CHECK_THROWS_WITH(cache.append(0, three_heads, three_heads),
                    Contains("k kv_heads (extent 1) is 3 but the cache has 2 kv_heads"));
  CHECK_THROWS_WITH(cache.append(0, dim5, dim5),
                    Contains("k head_dim (extent 2) is 5 but the cache's head_dim is 4"));
  CHECK_THROWS_WITH(cache.append(0, good, one_token),
                    Contains("v tokens (extent 0) is 1 but k tokens (extent 0) is 2"));
  CHECK_THROWS_WITH(cache.append(0, good, three_heads), Contains("v kv_heads (extent 1) is 3"));
  CHECK_THROWS_WITH(cache.append(0, good, dim5), Contains("v head_dim (extent 2) is 5"));
  const tensor_view<const float, 3> null_k(nullptr, {2, 2, 4});
  CHECK_THROWS_WITH(cache.append(0, null_k, good), Contains("'k' has null data but 16 elements"));
  CHECK_THROWS_WITH(cache.append(0, good, null_k), Contains("'v' has null data but 16 elements"));
  CHECK_THROWS_WITH(cache.append(0, good, good, std::vector<position>{1, 2, 3}),
                    Contains("positions has 3 entries but k has 2 tokens"));
  CHECK_THROWS_WITH(
      cache.append(0, good, good, std::vector<position>{1, std::numeric_limits<position>::max()}),
      Contains("positions[1] is 9223372036854775807"));
  // Exhausting the pool: 20 pages of 3 tokens; 60 tokens into both heads of a layer cannot fit.
  std::vector<float> big(60 * 2 * 4, 1.0f);
  const tensor_view<const float, 3> too_many(big.data(), {60, 2, 4});
  CHECK_THROWS_WITH(
      cache.append(0, too_many, too_many),
      Contains("attnkit::kv_cache::append: layer 0 needs") && Contains("nothing was appended"));
  // append_token.
  const std::vector<float> row4(4, 1.0f), row3(3, 1.0f);
  CHECK_THROWS_WITH(
      cache.append_token<float>(0, 0, row3, row4, 0),
      Contains("attnkit::kv_cache::append_token: key has 3 elements but head_dim is 4"));
  CHECK_THROWS_WITH(cache.append_token<float>(0, 0, row4, row3, 0),
                    Contains("value has 3 elements"));
  CHECK_THROWS_WITH(cache.append_token<float>(0, 9, row4, row4, 0),
                    Contains("append_token: head is 9"));
  CHECK_THROWS_WITH(cache.append_token<float>(3, 0, row4, row4, 0),
                    Contains("append_token: layer is 3"));
  CHECK_THROWS_WITH(
      cache.append_token<float>(0, 0, row4, row4, std::numeric_limits<position>::max()),
      Contains("pos[0] is 9223372036854775807"));
  // retain / evict slot lists.
  CHECK_THROWS_WITH(cache.retain(1, 0, std::vector<index_t>{0, 2, 1}),
                    Contains("attnkit::kv_cache::retain: keep_slots[2] is 1 after keep_slots[1] = "
                             "2, slots must be sorted ascending and unique"));
  CHECK_THROWS_WITH(cache.retain(1, 0, std::vector<index_t>{0, 2, 2}),
                    Contains("keep_slots[2] is 2 after keep_slots[1] = 2"));
  CHECK_THROWS_WITH(cache.retain(1, 0, std::vector<index_t>{0, n}),
                    Contains("keep_slots[1] is " + std::to_string(n) + " but head 0 of layer 1"));
  using runs = std::vector<attnkit::slot_run>;
  CHECK_THROWS_WITH(cache.retain(1, 0, runs{{0, 3}, {2, 5}}),
                    Contains("attnkit::kv_cache::retain: keep_runs[1] is [2, 5) after [0, 3), runs "
                             "must be ascending and not overlap"));
  CHECK_THROWS_WITH(cache.retain(1, 0, runs{{0, 3}, {4, 4}}),
                    Contains("keep_runs[1] is [4, 4) but head 0 of layer 1 holds " +
                             std::to_string(n) + " tokens (runs must be non-empty)"));
  CHECK_THROWS_WITH(cache.retain(1, 0, runs{{-1, 3}}), Contains("keep_runs[0] is [-1, 3)"));
  CHECK_THROWS_WITH(cache.retain(1, 0, runs{{1, n + 1}}),
                    Contains("keep_runs[0] is [1, " + std::to_string(n + 1) + ")"));
  CHECK_THROWS_WITH(
      cache.retain(1, 0,
                   std::span<const attnkit::slot_run>(static_cast<attnkit::slot_run*>(nullptr), 2)),
      Contains("keep_runs has null data but 2 entries"));
  CHECK_THROWS_WITH(cache.evict(1, 1, std::vector<index_t>{-1, 0}),
                    Contains("attnkit::kv_cache::evict: slots[0] is -1"));
  CHECK_THROWS_WITH(cache.evict(1, 1, std::vector<index_t>{3, 3}),
                    Contains("slots[1] is 3 after slots[0] = 3"));
  CHECK_THROWS_WITH(cache.evict(1, 1, std::vector<index_t>{0, n + 4}),
                    Contains("slots[1] is " + std::to_string(n + 4)));
  CHECK_THROWS_WITH(cache.evict(2, 0, std::vector<index_t>{}), Contains("evict: layer is 2"));
  CHECK_THROWS_WITH(cache.retain(0, -1, std::vector<index_t>{}), Contains("retain: head is -1"));
  unchanged();

  // A full pool: appends that need a page fail, those that fill a partly used page succeed.
  while (pool->free_pages() > 0) {
    std::vector<page_id> one(1);
    pool->allocate(one);  // held outside any cache
  }
  const std::vector<float> key(4, 2.0f);
  const index_t len = cache.length(1, 0);
  if (len % 3 == 0) {
    CHECK_THROWS_WITH(cache.append_token<float>(1, 0, key, key, 99),
                      Contains("attnkit::kv_cache::append_token: layer 1 needs 1 new pages"));
  } else {
    cache.append_token<float>(1, 0, key, key, 99);
    model_token token{std::vector<std::uint32_t>(4, bits_of(2.0f)),
                      std::vector<std::uint32_t>(4, bits_of(2.0f)), 99};
    model.at(1, 0).push_back(token);
    model.next_at(1, 0) = std::max<position>(model.next_at(1, 0), 100);
  }
  std::vector<int> owner(20, 0);
  const std::string why = compare(cache, model, owner);
  INFO(why);
  CHECK(why.empty());
}

// The allocation helper under the page pool: large arrays start on a 2 MiB boundary (so that
// transparent huge pages can back them whole) and every byte of them is usable; small arrays keep
// the 64-byte alignment the vector loads need, without 2 MiB of padding.
TEST_CASE("allocate_aligned: 64-byte alignment, 2 MiB alignment from 2 MiB on", "[kv_cache]") {
  namespace detail = attnkit::detail;
  const auto address = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };
  for (const std::size_t count :
       {std::size_t{1}, std::size_t{1000}, std::size_t{(2 << 20) / 4 - 1}}) {
    const auto small = detail::allocate_aligned<float>(count);
    REQUIRE(small != nullptr);
    CHECK(address(small.get()) % 64 == 0);
  }
  for (const std::size_t count : {std::size_t{(2 << 20) / 4}, std::size_t{(5 << 20) / 4 + 3}}) {
    const auto large = detail::allocate_aligned<float>(count);
    REQUIRE(large != nullptr);
    CHECK(address(large.get()) % detail::huge_page_bytes == 0);
    // The whole requested range is writable (ASan checks the bounds).
    std::memset(large.get(), 0x7f, count * sizeof(float));
    CHECK(large.get()[count - 1] == std::bit_cast<float>(0x7f7f7f7fu));
  }
  CHECK(detail::allocate_aligned<float>(0) == nullptr);
}
