-- wrk: JSON-RPC SendMessage (or SendStreamingMessage with METHOD=SendStreamingMessage), blocking,
-- a fresh messageId per request so every request is a new task.
local method = os.getenv("METHOD") or "SendMessage"
local token = os.getenv("TOKEN") or ""
local counter = 0
local prefix

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1000000000)))
end

function init(args)
  prefix = "bench-" .. (tid or "0") .. "-" .. tostring(math.random(1, 1000000000))
end

function request()
  counter = counter + 1
  local body = '{"jsonrpc":"2.0","id":' .. counter .. ',"method":"' .. method .. '","params":{"message":'
    .. '{"messageId":"' .. prefix .. '-' .. counter .. '","role":"ROLE_USER","parts":[{"text":"hello"}]}}}'
  local headers = {
    ["Content-Type"] = "application/json",
    ["A2A-Version"] = "1.0",
  }
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if method == "SendStreamingMessage" then headers["Accept"] = "text/event-stream" end
  return wrk.format("POST", nil, headers, body)
end

-- JSON-RPC errors come with HTTP 200: they count as failures too.
function response(status, headers, body)
  if status ~= 200 or body:find('"error"', 1, true) then
    io.stderr:write("status " .. status .. ": " .. body:sub(1, 200) .. "\n")
  end
end
