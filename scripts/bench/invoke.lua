-- wrk script: POST /api/invoke with the demo model, for users u0..u{N-1} (an admin key spends
-- anyone's budget). Arguments (after --): number of users, the admin API key.
function init(args)
  users = tonumber(args[1]) or 1000
  api_key = args[2] or ""
  math.randomseed(os.time())
end

request = function()
  local user = math.random(0, users - 1)
  local body = '{"userId":"u' .. user .. '","prompt":"How many tokens does this prompt use, exactly?","maxTokens":16}'
  return wrk.format("POST", "/api/invoke", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. api_key,
  }, body)
end
