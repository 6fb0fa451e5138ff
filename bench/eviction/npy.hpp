// attnkit eviction harness — reading and writing NumPy .npy arrays (Q/K/V traces dumped from a
// model), so real traces run through the same harness as the synthetic workloads.
//
// Supported: format versions 1.0, 2.0 and 3.0; little-endian float32 ('<f4'), float16 ('<f2')
// and bfloat16 stored as uint16 ('<u2', the usual way to dump torch.bfloat16 with NumPy, read
// only when the caller says so); C order. Everything is converted to float32. Fortran-order
// arrays and other dtypes are rejected with a message naming the file and the header.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"

namespace attnkit::harness {

struct npy_array {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // C order
};

namespace detail {

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False,
// 'shape': (4096, 8, 128), }: only the three keys NumPy writes are read.
inline std::string npy_field(const std::string& header, const std::string& key,
                             const std::string& path) {
  const auto at = header.find("'" + key + "'");
  attnkit::detail::require(at != std::string::npos, "read_npy: ", path, ": header has no '", key,
                           "' (header: ", header, ")");
  auto colon = header.find(':', at);
  attnkit::detail::require(colon != std::string::npos, "read_npy: ", path, ": bad header ", header);
  ++colon;
  while (colon < header.size() && header[colon] == ' ') ++colon;
  if (header[colon] == '(') return header.substr(colon, header.find(')', colon) - colon + 1);
  const auto end = header.find_first_of(",}", colon);
  return header.substr(colon, end - colon);
}

}  // namespace detail

// Reads a .npy file; `uint16_is_bfloat16` says how to read '<u2' arrays.
inline npy_array read_npy(const std::string& path, bool uint16_is_bfloat16 = true) {
  std::ifstream in(path, std::ios::binary);
  attnkit::detail::require(bool(in), "read_npy: cannot open ", path);
  char magic[8];
  in.read(magic, 8);
  attnkit::detail::require(in.gcount() == 8 && std::memcmp(magic, "\x93NUMPY", 6) == 0,
                           "read_npy: ", path, " is not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  std::uint32_t header_length = 0;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_length = b[0] | (std::uint32_t(b[1]) << 8);
  } else {
    attnkit::detail::require(major == 2 || major == 3, "read_npy: ", path,
                             ": unsupported format version ", major);
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_length = b[0] | (std::uint32_t(b[1]) << 8) | (std::uint32_t(b[2]) << 16) |
                    (std::uint32_t(b[3]) << 24);
  }
  std::string header(header_length, '\0');
  in.read(header.data(), header_length);
  attnkit::detail::require(in.gcount() == std::streamsize(header_length), "read_npy: ", path,
                           ": truncated header");

  std::string descr = detail::npy_field(header, "descr", path);
  descr.erase(std::remove(descr.begin(), descr.end(), '\''), descr.end());
  const std::string fortran = detail::npy_field(header, "fortran_order", path);
  attnkit::detail::require(fortran.find("False") != std::string::npos, "read_npy: ", path,
                           ": Fortran-order arrays are not supported (header: ", header, ")");
  const std::string shape_text = detail::npy_field(header, "shape", path);

  npy_array array;
  std::int64_t count = 1;
  {
    std::string digits;
    for (char c : shape_text) {
      if (c >= '0' && c <= '9') {
        digits += c;
      } else if (!digits.empty()) {
        array.shape.push_back(std::stoll(digits));
        count *= array.shape.back();
        digits.clear();
      }
    }
  }

  int element_bytes = 0;
  if (descr == "<f4") element_bytes = 4;
  if (descr == "<f2" || descr == "<u2") element_bytes = 2;
  attnkit::detail::require(element_bytes != 0, "read_npy: ", path, ": dtype ", descr,
                           " is not supported (float32 '<f4', float16 '<f2', bfloat16 as '<u2')");
  std::vector<char> raw(static_cast<std::size_t>(count * element_bytes));
  in.read(raw.data(), std::streamsize(raw.size()));
  attnkit::detail::require(in.gcount() == std::streamsize(raw.size()), "read_npy: ", path,
                           ": expected ", count, " elements of ", element_bytes,
                           " bytes, the file is shorter");
  array.data.resize(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const char* at = raw.data() + i * element_bytes;
    if (element_bytes == 4) {
      std::memcpy(&array.data[std::size_t(i)], at, 4);
    } else {
      std::uint16_t bits;
      std::memcpy(&bits, at, 2);
      array.data[std::size_t(i)] = (descr == "<f2" || !uint16_is_bfloat16)
                                       ? static_cast<float>(attnkit::half::from_bits(bits))
                                       : static_cast<float>(attnkit::bfloat16::from_bits(bits));
    }
  }
  return array;
}

// Writes a float32 .npy (version 1.0): what the harness's tests and trace dumps use.
inline void write_npy(const std::string& path, const std::vector<std::int64_t>& shape,
                      const float* data) {
  std::ostringstream dict;
  dict << "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  std::int64_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dict << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) dict << ' ';
    count *= shape[i];
  }
  dict << "), }";
  std::string header = dict.str();
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  attnkit::detail::require(bool(out), "write_npy: cannot open ", path, " for writing");
  out.write("\x93NUMPY\x01\x00", 8);
  const unsigned char length[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                   static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(length), 2);
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(data), std::streamsize(count * 4));
  attnkit::detail::require(bool(out), "write_npy: writing ", path, " failed");
}

}  // namespace attnkit::harness
