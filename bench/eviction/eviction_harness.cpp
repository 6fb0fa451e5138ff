// attnkit-eviction-harness: every KV-cache eviction policy at compression 0.25 / 0.5 / 0.75 /
// 0.875 on a synthetic long-context workload (or a real Q/K/V trace): relative output error,
// attention mass kept, needle recall and KV bytes. See harness.hpp for what is measured and how.
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"

namespace {

constexpr const char* usage_text = R"(usage: attnkit-eviction-harness [options]

Runs every KV-cache policy (full random streaming h2o tova snapkv pyramidkv knorm fastgen duo
razor adakv) at compression 0.25, 0.5, 0.75 and 0.875 and prints relative L2 error of the probes'
attention output, attention mass kept, needle recall and KV bytes per (policy, compression).
quest is Quest page selection at read time beside them: it evicts nothing, and each probe reads
the pages the compression leaves.

Synthetic workload (default):
  --tokens N        prompt tokens (4096)
  --layers L        layers (4)
  --heads H         query heads (8)
  --kv-heads K      KV heads (8, at most H; H must be a multiple)
  --head-dim D      head dimension (64; at least 34 + needles)
  --needles M       needles planted at depths (i + 0.5) / M of the prompt (4)
  --seed S          workload seed (1)

Real traces:
  --trace DIR       read DIR/layer{l}_q.npy [tokens, q_heads, head_dim] and DIR/layer{l}_k.npy,
                    DIR/layer{l}_v.npy [kv_tokens, kv_heads, head_dim] for l = 0, 1, ... (until a
                    file is missing); float32 '<f4', float16 '<f2' or bfloat16 stored as '<u2'.
                    The last P rows of q are the probes (decode queries), the rows before them the
                    prompt; kv_tokens is tokens (the probes' own K/V rows are dropped) or
                    tokens - P. Needle recall is reported as nan.
  --probes P        probes of a trace (8)
  --window W        observation window of a trace: SnapKV's voting queries (32)
  --head-table PATH DuoAttention/RazorAttention head table ("layer head role [score]" lines,
                    kvcache/head_table.hpp); without it the table is estimated from the prompt

Output and run:
  --dtype float|half  KV cache element type (float)
  --csv PATH        also write policy,compression,rel_error,mass_kept,needle_recall,kv_bytes
  --policies a,b    run only these policies
  --compressions x,y  compression ratios to run (0.25,0.5,0.75,0.875)
  --write-trace DIR write the synthetic workload as a trace (the layout above) and exit
  --progress        one line per run on stderr
  --help
)";

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ','))
    if (!part.empty()) parts.push_back(part);
  return parts;
}

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "attnkit-eviction-harness: " << message << "\n\n" << usage_text;
  std::exit(2);
}

long long to_integer(const std::string& option, const std::string& value) {
  try {
    std::size_t used = 0;
    const long long x = std::stoll(value, &used);
    if (used == value.size()) return x;
  } catch (const std::exception&) {
  }
  usage_error(option + " expects an integer, got '" + value + "'");
}

double to_number(const std::string& option, const std::string& value) {
  try {
    std::size_t used = 0;
    const double x = std::stod(value, &used);
    if (used == value.size()) return x;
  } catch (const std::exception&) {
  }
  usage_error(option + " expects a number, got '" + value + "'");
}

}  // namespace

int main(int argc, char** argv) {
  namespace h = attnkit::harness;
  h::workload_config config;
  h::harness_options options;
  std::string csv, trace, write_trace, head_table_path;
  attnkit::index_t probes = 8, window = 32;

  const std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) usage_error(a + " needs a value");
      return args[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << usage_text;
      return 0;
    } else if (a == "--tokens") {
      config.prompt_tokens = to_integer(a, value());
    } else if (a == "--layers") {
      config.layers = to_integer(a, value());
    } else if (a == "--heads") {
      config.q_heads = to_integer(a, value());
    } else if (a == "--kv-heads") {
      config.kv_heads = to_integer(a, value());
    } else if (a == "--head-dim") {
      config.head_dim = to_integer(a, value());
    } else if (a == "--needles") {
      config.needles = to_integer(a, value());
    } else if (a == "--seed") {
      config.seed = static_cast<std::uint64_t>(to_integer(a, value()));
      options.seed = config.seed;
    } else if (a == "--trace") {
      trace = value();
    } else if (a == "--probes") {
      probes = to_integer(a, value());
    } else if (a == "--window") {
      window = to_integer(a, value());
    } else if (a == "--head-table") {
      head_table_path = value();
    } else if (a == "--dtype") {
      const std::string& t = value();
      if (t == "float" || t == "float32") {
        options.dtype = h::kv_dtype::float32;
      } else if (t == "half" || t == "float16") {
        options.dtype = h::kv_dtype::float16;
      } else {
        usage_error("--dtype is '" + t + "', expected float or half");
      }
    } else if (a == "--csv") {
      csv = value();
    } else if (a == "--policies") {
      options.policies = split_commas(value());
    } else if (a == "--compressions") {
      options.compressions.clear();
      for (const std::string& x : split_commas(value()))
        options.compressions.push_back(to_number(a, x));
    } else if (a == "--write-trace") {
      write_trace = value();
    } else if (a == "--progress") {
      options.progress = &std::cerr;
    } else {
      usage_error("unknown option '" + a + "'");
    }
  }

  try {
    if (config.kv_heads > config.q_heads) config.kv_heads = config.q_heads;
    h::eviction_input input;
    if (trace.empty()) {
      h::workload w = h::make_synthetic_workload(config);
      if (!write_trace.empty()) {
        h::write_trace(write_trace, w);
        std::cout << "attnkit-eviction-harness: wrote " << w.layers.size() << " layers of "
                  << config.prompt_tokens << " prompt tokens + " << w.probes() << " probes to "
                  << write_trace << " (use --probes " << w.probes() << ")\n";
        return 0;
      }
      input = h::from_workload(std::move(w));
    } else {
      input = h::load_trace(trace, probes, window);
    }
    if (!head_table_path.empty()) {
      std::ifstream in(head_table_path);
      attnkit::detail::require(in.is_open(), "attnkit-eviction-harness: cannot open --head-table ",
                               head_table_path);
      std::stringstream text;
      text << in.rdbuf();
      input.head_table = text.str();
      input.head_table_source = head_table_path;
    }
    const h::eviction_report report = h::run_eviction_harness(input, options);
    std::cout << h::format_table(report);
    if (!csv.empty()) {
      h::write_csv(csv, report);
      std::cout << "wrote " << csv << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "attnkit-eviction-harness: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
