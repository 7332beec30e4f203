// The controller tests' main. They need PostgreSQL and NATS: see
// tests/support/harness.hpp for how they are found.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
