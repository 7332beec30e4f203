#include "engine/notify_group.hpp"

#include <algorithm>
#include <utility>

#include "dmm/errors.hpp"

namespace dmm::detail {

void NotifyGroups::notify(const std::string& kind, JsonMatter matter, const Write& write) {
  Call self{std::move(matter), false, nullptr};
  std::unique_lock lock(mu_);
  auto& queue = queues_[kind];  // map nodes are stable, and queues are never erased
  queue.waiting.push_back(&self);
  while (!self.done) {
    if (queue.writers >= kWriters || queue.waiting.empty()) {
      cv_.wait(lock);
      continue;
    }
    // Write whatever is queued, whether or not this call's matter is still
    // among it (another writer may be writing it already).
    const auto n = std::min(queue.waiting.size(), kMaxBatch);
    std::vector<Call*> batch(queue.waiting.begin(), queue.waiting.begin() + static_cast<std::ptrdiff_t>(n));
    queue.waiting.erase(queue.waiting.begin(), queue.waiting.begin() + static_cast<std::ptrdiff_t>(n));
    ++queue.writers;
    lock.unlock();
    try {
      write_all(batch, write);
    } catch (...) {  // out of memory preparing the write: fail the batch, never strand its callers
      for (auto* call : batch) call->error = std::current_exception();
    }
    lock.lock();
    --queue.writers;
    for (auto* call : batch) call->done = true;
    cv_.notify_all();
  }
  if (self.error) std::rethrow_exception(self.error);
}

std::size_t NotifyGroups::waiting(const std::string& kind) {
  std::lock_guard lock(mu_);
  auto it = queues_.find(kind);
  return it == queues_.end() ? 0 : it->second.waiting.size();
}

void NotifyGroups::write_all(std::vector<Call*>& calls, const Write& write) {
  // Calls of one identity in one batch were concurrent: the last queued wins,
  // as if it came right after the others.
  std::map<std::string, Call*> last;
  for (auto* call : calls) last[call->matter.identity] = call;
  auto fail = [&](const std::string* identity, std::exception_ptr error) {
    for (auto* call : calls)
      if (!identity || call->matter.identity == *identity) call->error = error;
  };
  std::vector<JsonMatter> matters;  // in identity order, as notify_many writes them
  matters.reserve(last.size());
  for (const auto& [identity, call] : last) matters.push_back(call->matter);
  try {
    write(matters);
    return;
  } catch (const DatabaseError&) {
    if (last.size() == 1) {
      fail(nullptr, std::current_exception());
      return;
    }
  } catch (...) {
    fail(nullptr, std::current_exception());
    return;
  }
  // Refused as a whole: each on its own, so that only the bad one fails.
  for (const auto& [identity, call] : last) {
    std::vector<JsonMatter> one{call->matter};
    try {
      write(one);
    } catch (...) {
      fail(&identity, std::current_exception());
    }
  }
}

}  // namespace dmm::detail
