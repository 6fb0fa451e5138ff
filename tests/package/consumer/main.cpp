// Minimal downstream consumer of attnkit, built by tests/package/check_consumers.cmake both
// against an installed attnkit (find_package) and against the source tree (add_subdirectory).
#include <attnkit/attnkit.hpp>

int main() { return static_cast<int>(attnkit::index_t{0}); }
