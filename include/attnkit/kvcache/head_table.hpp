// attnkit — head_table: a role (and optionally a score) per (layer, KV head), from a text file.
//
// DuoAttention and RazorAttention classify heads offline: retrieval heads keep the whole cache,
// streaming heads keep sinks and a recent window. The classification is data, loaded at start-up:
//
//   # anything after '#' is a comment; blank lines are ignored
//   # layer  head  role        [score]
//   0        0     retrieval   0.91
//   0        1     streaming   0.03
//
// One line per (layer, KV head): two non-negative integers, the role `retrieval` or `streaming`,
// and optionally a finite score (DuoAttention's gate value, RazorAttention's retrieval score);
// fields separated by spaces or tabs. Parsing is strict: every line must parse, every (layer,
// head) must lie inside the model's [layers, kv_heads] and appear exactly once, and every head
// must appear. Errors are attnkit::error naming the source, the line number and the problem:
//   attnkit::head_table: heads.txt:7: head 9 is out of range (the model has 8 KV heads)
//
// assign_streaming_by_score(fraction) re-derives the roles from the scores as kvpress'
// DuoAttentionPress does with DuoAttention's released gate values: the round(fraction · heads)
// lowest-scoring heads become streaming, the rest retrieval.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <fstream>
#include <istream>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"

namespace attnkit {

enum class head_role : unsigned char { retrieval, streaming };

class head_table {
 public:
  // Every head of the model with the same role and no score.
  head_table(index_t layers, index_t kv_heads, head_role role = head_role::retrieval)
      : layers_(layers), kv_heads_(kv_heads) {
    detail::require(layers >= 1 && kv_heads >= 1, "attnkit::head_table: layers (", layers,
                    ") and kv_heads (", kv_heads, ") must be >= 1");
    const auto n = static_cast<std::size_t>(layers * kv_heads);
    roles_.assign(n, role);
    scores_.assign(n, 0.0);
    has_score_.assign(n, 0);
  }

  // Parses the format above from `in`; `source` names it in error messages.
  static head_table parse(std::istream& in, std::string_view source, index_t layers,
                          index_t kv_heads) {
    head_table table(layers, kv_heads);
    std::vector<unsigned char> seen(table.roles_.size(), 0);
    std::string line;
    index_t line_number = 0;
    while (std::getline(in, line)) {
      ++line_number;
      const std::size_t hash = line.find('#');
      if (hash != std::string::npos) line.resize(hash);
      std::vector<std::string_view> fields = split(line);
      if (fields.empty()) continue;
      auto fail = [&](const auto&... parts) {
        detail::fail("attnkit::head_table: ", source, ":", line_number, ": ", parts...);
      };
      if (fields.size() < 3 || fields.size() > 4)
        fail("expected 'layer head role [score]', found ", fields.size(), " fields");
      const std::optional<index_t> layer = parse_index(fields[0]);
      const std::optional<index_t> head = parse_index(fields[1]);
      if (!layer) fail("layer '", fields[0], "' is not a non-negative integer");
      if (!head) fail("head '", fields[1], "' is not a non-negative integer");
      if (*layer >= layers)
        fail("layer ", *layer, " is out of range (the model has ", layers, " layers)");
      if (*head >= kv_heads)
        fail("head ", *head, " is out of range (the model has ", kv_heads, " KV heads)");
      head_role role = head_role::retrieval;
      if (fields[2] == "retrieval") {
        role = head_role::retrieval;
      } else if (fields[2] == "streaming") {
        role = head_role::streaming;
      } else {
        fail("role '", fields[2], "' is neither 'retrieval' nor 'streaming'");
      }
      const std::size_t i = table.index(*layer, *head);
      if (seen[i]) fail("layer ", *layer, " head ", *head, " appears twice");
      seen[i] = 1;
      table.roles_[i] = role;
      if (fields.size() == 4) {
        const std::optional<double> score = parse_score(fields[3]);
        if (!score) fail("score '", fields[3], "' is not a finite number");
        table.scores_[i] = *score;
        table.has_score_[i] = 1;
      }
    }
    detail::require(!in.bad(), "attnkit::head_table: ", source, ": read error after line ",
                    line_number);
    for (std::size_t i = 0; i < seen.size(); ++i)
      detail::require(seen[i] != 0, "attnkit::head_table: ", source, ": layer ",
                      static_cast<index_t>(i) / kv_heads, " head ",
                      static_cast<index_t>(i) % kv_heads, " is missing (every one of the ", layers,
                      " x ", kv_heads, " heads needs a line)");
    return table;
  }

  static head_table parse(std::string_view text, std::string_view source, index_t layers,
                          index_t kv_heads) {
    std::istringstream in{std::string(text)};
    return parse(in, source, layers, kv_heads);
  }

  static head_table load(const std::string& path, index_t layers, index_t kv_heads) {
    std::ifstream in(path);
    detail::require(in.is_open(), "attnkit::head_table::load: cannot open '", path, "'");
    return parse(in, path, layers, kv_heads);
  }

  index_t layers() const noexcept { return layers_; }
  index_t kv_heads() const noexcept { return kv_heads_; }

  head_role role(index_t layer, index_t head) const {
    check_head("attnkit::head_table::role", layer, head);
    return roles_[index(layer, head)];
  }
  std::optional<double> score(index_t layer, index_t head) const {
    check_head("attnkit::head_table::score", layer, head);
    const std::size_t i = index(layer, head);
    return has_score_[i] ? std::optional<double>(scores_[i]) : std::nullopt;
  }
  void set(index_t layer, index_t head, head_role role, std::optional<double> score = {}) {
    check_head("attnkit::head_table::set", layer, head);
    detail::require(!score || std::isfinite(*score), "attnkit::head_table::set: score is ",
                    score.value_or(0.0), ", it must be finite");
    const std::size_t i = index(layer, head);
    roles_[i] = role;
    scores_[i] = score.value_or(0.0);
    has_score_[i] = score ? 1 : 0;
  }

  // The round(fraction · layers · kv_heads) lowest-scoring heads become streaming heads, the
  // others retrieval heads (ties: the earlier head first). Every head needs a score.
  void assign_streaming_by_score(double fraction) {
    constexpr const char* fn = "attnkit::head_table::assign_streaming_by_score";
    detail::require(fraction >= 0.0 && fraction <= 1.0, fn, ": fraction is ", fraction,
                    ", it must be in [0, 1]");
    for (std::size_t i = 0; i < roles_.size(); ++i)
      detail::require(has_score_[i] != 0, fn, ": layer ", static_cast<index_t>(i) / kv_heads_,
                      " head ", static_cast<index_t>(i) % kv_heads_, " has no score");
    std::vector<std::size_t> order(roles_.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return scores_[a] < scores_[b]; });
    const auto streaming =
        static_cast<std::size_t>(std::llround(fraction * static_cast<double>(roles_.size())));
    for (std::size_t r = 0; r < order.size(); ++r)
      roles_[order[r]] = r < streaming ? head_role::streaming : head_role::retrieval;
  }

  // Throws unless the table describes a layer of kv_heads heads at layer_index.
  void check(const char* function, index_t layer_index, index_t kv_heads) const {
    detail::require(layer_index >= 0 && layer_index < layers_, function, ": layer_index is ",
                    layer_index, " but the head table has ", layers_, " layers");
    detail::require(kv_heads == kv_heads_, function, ": the layer has ", kv_heads,
                    " KV heads but the head table has ", kv_heads_);
  }

 private:
  std::size_t index(index_t layer, index_t head) const noexcept {
    return static_cast<std::size_t>(layer * kv_heads_ + head);
  }
  void check_head(const char* function, index_t layer, index_t head) const {
    detail::require(layer >= 0 && layer < layers_ && head >= 0 && head < kv_heads_, function,
                    ": layer ", layer, " head ", head, " is outside the table's ", layers_, " x ",
                    kv_heads_, " heads");
  }

  static std::vector<std::string_view> split(std::string_view line) {
    std::vector<std::string_view> fields;
    std::size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
      const std::size_t begin = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') ++i;
      if (i > begin) fields.push_back(line.substr(begin, i - begin));
    }
    return fields;
  }
  static std::optional<index_t> parse_index(std::string_view field) {
    index_t value = 0;
    const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), value);
    if (ec != std::errc() || end != field.data() + field.size() || value < 0) return std::nullopt;
    return value;
  }
  static std::optional<double> parse_score(std::string_view field) {
    double value = 0.0;
    const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), value);
    if (ec != std::errc() || end != field.data() + field.size() || !std::isfinite(value))
      return std::nullopt;
    return value;
  }

  index_t layers_;
  index_t kv_heads_;
  std::vector<head_role> roles_;
  std::vector<double> scores_;
  std::vector<unsigned char> has_score_;
};

}  // namespace attnkit
