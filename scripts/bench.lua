-- wrk script of scripts/bench: per-request latencies, written with wrk's summary to the file
-- named by BENCH_WRK_OUT.
--
-- wrk 4.x corrects its latency histogram for coordinated omission before `done` sees it (it
-- adds synthetic samples below every latency longer than twice the mean interval), and the
-- Debian build's `latency` object offers only min, max, mean, stdev and percentile() of that
-- corrected histogram. So each thread times its own requests: the harness runs one connection
-- per thread (-t N -c N), where wrk calls `request` for the next request as soon as the answer
-- to the last one is complete, so the time from one `request` call to the next is a request's
-- latency (plus wrk's few microseconds between the answer and the next request, alike for every
-- target). It reads a monotonic clock through LuaJIT's FFI. Each thread keeps a histogram
-- (microseconds -> count, 10 us buckets above 10 ms, 100 us above 100 ms: bounded whatever the
-- run's length); `done` adds them up.
--
-- There is no `response` function on purpose. With one, wrk copies every answer's header
-- names, header values and body into new Lua strings, and LuaJIT interns each string: a value
-- that differs on every answer (a trace id) is a new allocation for the garbage collector each
-- time. With nginx alone behind wrk, an answer shaped like hello's (a `traceresponse` with a
-- fresh trace id, a 179-byte body) then cost wrk 0.8 us more per request than HAProxy's
-- through nginx and 8 % of the req/s; without it, both cost the same (docs/performance.md,
-- "The client's cost of an answer"). Statuses of 400 and above are still counted by wrk
-- itself.

local ffi = require("ffi")
ffi.cdef([[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock, bench_timespec *ts);
]])
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local function bucket(us)
  us = math.floor(us)
  if us < 10000 then
    return us
  elseif us < 100000 then
    return us - us % 10
  end
  return us - us % 100
end

-- Per thread (each thread has its own Lua state running this file).
local req = nil
hist = {}
-- Requests of 10 ms or more: when they started (monotonic, us) and how long they took; the
-- first 1,000 per thread.
slow = {}
local SLOW_US = 10000

function init(args)
  req = wrk.format()
end

-- BENCH_WRK_PLAIN=1 (scripts/bench --wrk-plain): no Lua per request, wrk's own percentiles.
if os.getenv("BENCH_WRK_PLAIN") ~= "1" then
  -- When this thread's last request was written: its answer is complete when `request` is
  -- called again.
  local last = nil

  function request()
    local now = now_us()
    if last ~= nil then
      local took = now - last
      local b = bucket(took)
      hist[b] = (hist[b] or 0) + 1
      if took >= SLOW_US and #slow < 1000 then
        table.insert(slow, string.format("slow %d %d", last, took))
      end
    end
    last = now
    return req
  end
end

-- In the main Lua state: the threads, to collect their histograms at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local out = os.getenv("BENCH_WRK_OUT")
  local f = assert(io.open(out, "w"))
  local e = summary.errors
  f:write(string.format("duration_us %d\nrequests %d\nbytes %d\n",
    summary.duration, summary.requests, summary.bytes))
  f:write(string.format("errors %d %d %d %d %d\n",
    e.connect, e.read, e.write, e.status, e.timeout))
  if summary.requests > 0 then
    f:write(string.format("wrk_p50 %d\nwrk_p99 %d\nwrk_max %d\n",
      latency:percentile(50), latency:percentile(99), latency.max))
  end
  local total = {}
  for _, thread in ipairs(threads) do
    for us, n in pairs(thread:get("hist") or {}) do
      total[us] = (total[us] or 0) + n
    end
  end
  for us, n in pairs(total) do
    f:write(string.format("%d %d\n", us, n))
  end
  for _, thread in ipairs(threads) do
    for _, line in ipairs(thread:get("slow") or {}) do
      f:write(line .. "\n")
    end
  end
  f:close()
end
