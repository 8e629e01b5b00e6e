-- wrk: GET with the A2A-Version header and, when TOKEN is set, a bearer token (GetTask over
-- HTTP+JSON, or the agent card).
local token = os.getenv("TOKEN") or ""
wrk.headers["A2A-Version"] = "1.0"
if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. body:sub(1, 200) .. "\n")
  end
end
