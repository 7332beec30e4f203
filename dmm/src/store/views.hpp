// Connections for operating tools (dmmctl, example debug): plain ones, with
// none of the engine's session settings or prepared statements. The queries
// themselves implement dmm/inspect.hpp (store/views.cpp).
#pragma once

#include <memory>
#include <pqxx/pqxx>
#include <string>

namespace dmm::detail {

// ConnectionError naming the URL (password masked) when it cannot connect.
std::unique_ptr<pqxx::connection> connect_tool(const std::string& url);

}  // namespace dmm::detail
