-- wrk script: POST /api/users/u{N}/usage with a unique Idempotency-Key per request.
-- Arguments (after --): number of users (1 = the hot user u0), a key prefix for this run, and
-- the API key (with the usage:record scope) that sends the reports.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  users = tonumber(args[1]) or 1000
  prefix = args[2] or "bench"
  api_key = args[3] or ""
  counter = 0
  math.randomseed(os.time() + tid)
end

local body = '{"tokensConsumed":7,"inputTokens":5,"outputTokens":2,"model":"bench-model"}'

request = function()
  counter = counter + 1
  local user = 0
  if users > 1 then
    user = math.random(0, users - 1)
  end
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. api_key,
    ["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. counter,
  }
  return wrk.format("POST", "/api/users/u" .. user .. "/usage", headers, body)
end
