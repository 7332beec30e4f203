// hostd as users run it: placeholder until hostd lands.
#include <catch2/catch.hpp>
