// Plain-text tables for dmmctl: columns as wide as their widest cell.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace dmmctl {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Header and rows; the last column is not padded.
  void print(std::ostream& out) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace dmmctl
