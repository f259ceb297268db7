-- wrk script: every request gets a fresh hookInstance and its own pre-signed JWT.
-- Environment: BENCH_DIR holds body.json (with HOOK_INSTANCE placeholder) and
-- tokens.txt (one JWT per line; thread k uses lines k, k+n, k+2n ...).
local dir = os.getenv("BENCH_DIR")
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(dir .. "/body.json", "r"))
  template = f:read("*a")
  f:close()
  tokens = {}
  local n = tonumber(os.getenv("BENCH_THREADS"))
  local i = 0
  for line in io.lines(dir .. "/tokens.txt") do
    if i % n == tid then table.insert(tokens, line) end
    i = i + 1
  end
  next_token = 1
  math.randomseed(os.time() + tid * 7919)
  path = os.getenv("BENCH_PATH")
  use_auth = os.getenv("BENCH_AUTH") == "1"
end

local function uuid4()
  local t = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"
  return (string.gsub(t, "[xy]", function(c)
    local v = (c == "x") and math.random(0, 15) or math.random(8, 11)
    return string.format("%x", v)
  end))
end

function request()
  local headers = {["Content-Type"] = "application/json"}
  if use_auth then
    headers["Authorization"] = "Bearer " .. tokens[next_token]
    next_token = next_token + 1
    if next_token > #tokens then next_token = 1 end
  end
  local body = string.gsub(template, "HOOK_INSTANCE", uuid4())
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.1f %.1f %.1f\n",
    summary.requests, summary.errors.status, summary.errors.timeout + summary.errors.connect
      + summary.errors.read + summary.errors.write,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
