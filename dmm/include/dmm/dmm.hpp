// Everything a dmm user includes.
#pragma once

#include "dmm/bucket.hpp"
#include "dmm/context.hpp"
#include "dmm/dependency.hpp"
#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/log.hpp"
#include "dmm/materializer.hpp"
#include "dmm/migrate.hpp"
#include "dmm/options.hpp"
#include "dmm/result.hpp"
#include "dmm/signals.hpp"
#include "dmm/url.hpp"
#include "dmm/work_stream.hpp"
