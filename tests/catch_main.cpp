// The one Catch2 main() shared by every attnkit test executable (built once as an object library).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
