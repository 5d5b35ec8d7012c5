-- Argo CD health check for ondeck.io/ModelDeployment.
--
-- Install it under `resource.customizations.health.ondeck.io_ModelDeployment` in the
-- argocd-cm ConfigMap (see docs/gitops.md). Argo CD runs it with gopher-lua, so this file
-- sticks to Lua 5.1: no integer division, no goto, no bit operators.
--
-- Keyed on the Ready condition and observedGeneration, like kstatus:
--   Progressing  the operator has not yet observed the current generation (on the status
--                or on the Ready condition), or the model is converting / rolling out
--   Healthy      Ready=True for the current generation
--   Degraded     phase Failed, or Ready=False for a reason that needs a change from the
--                user (conversion, checksum or validation failed, invalid spec, ...)
-- The message is the Ready condition's message (the operator's message already says when
-- an older version of the model is still serving while the new one failed).

-- Ready=False reasons that no amount of waiting fixes: the operator's FAILURE_REASONS
-- (ondeck_operator/reconcile/status.py; a test keeps the two lists equal).
local failureReasons = {
  ConversionFailed = true,
  ConversionTimedOut = true,
  ChecksumMismatch = true,
  ValidationFailed = true,
  SourceUnavailable = true,
  InvalidSpec = true,
  ApplyFailed = true,
  ProgressDeadlineExceeded = true,
  InvalidSettings = true,
  UnsupportedFormat = true,
  UnsafeModel = true,
  ConverterMissing = true,
  OptimizationFailed = true,
  QuantizationFailed = true,
  StoreFailed = true,
  InternalError = true,
}

local function findCondition(conditions, conditionType)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition ~= nil and condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the ondeck operator to pick up the ModelDeployment"
  return hs
end

if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the ondeck operator to observe generation " .. string.format("%d", generation)
  return hs
end

local ready = findCondition(status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Ready condition is stale: " .. describe(ready, "waiting for the operator")
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Model is ready")
  return hs
end

if status.phase == "Failed" or (ready.status == "False" and failureReasons[ready.reason]) then
  hs.status = "Degraded"
  hs.message = describe(ready, "ModelDeployment failed")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Converting or rolling out the model")
return hs
