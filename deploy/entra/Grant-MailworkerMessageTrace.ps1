#Requires -Version 7.4
#Requires -Modules Microsoft.Graph.Authentication, Microsoft.Graph.Applications
<#
.SYNOPSIS
    Lets mailworker's delivery tracker read Exchange message trace: grants the tracker's app
    registration the Microsoft Graph application permission ExchangeMessageTrace.Read.All and
    provisions, in the tenant, the service principal of the Microsoft application that the message
    trace API needs. -VerifyOnly checks both and changes nothing.

.DESCRIPTION
    Delivery tracking (README "Delivery events", docs/runbook.md "Delivery tracking") reads
    GET /admin/exchange/tracing/messageTraces. Microsoft's requirements, each from its page:

      * Application permission ExchangeMessageTrace.Read.All ("Least privileged permissions" and
        "Higher privileged permissions: Not available"), global service only (the page's national
        cloud table: US Government L4, L5 and China have no message trace API):
        https://learn.microsoft.com/graph/api/messagetracingroot-list-messagetraces
      * A service principal in the tenant for "the Microsoft application with the following
        application (client) ID: 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373", created with
        New-MgServicePrincipal -AppId after Connect-MgGraph -Scopes "Application.ReadWrite.All":
        the exchangeMessageTrace resource page, section "Prerequisites",
        https://learn.microsoft.com/graph/api/resources/exchangemessagetrace
        (source: microsoftgraph/microsoft-graph-docs-contrib,
        api-reference/v1.0/resources/exchangemessagetrace.md). Without it the API answers 401 naming
        that app id (reported by elastic/integrations PR 18240).
      * Granting an application permission is an app role assignment on the Microsoft Graph service
        principal: principalId = the client's service principal, resourceId = Microsoft Graph's,
        appRoleId = the permission's id; delegated permissions "AppRoleAssignment.ReadWrite.All and
        Application.Read.All": https://learn.microsoft.com/graph/api/serviceprincipal-post-approleassignments
        The role id is read from the tenant's Microsoft Graph service principal by its value
        (Get-GraphAppRoleId), not hard-coded.

    PRIVACY: ExchangeMessageTrace.Read.All is tenant-wide. It cannot be limited by Exchange RBAC for
    Applications as Mail.Send is: whoever holds the tracker's credential reads sender, recipients,
    subject and status of EVERY mail of the tenant for 90 days. So use a SEPARATE app registration
    for the tracker (New-MailworkerApp.ps1 -AppName tracking; mailworker config tracking.app), never
    one of the sending profiles' registrations: this script refuses an app that holds a Microsoft
    Graph Mail.* application permission, or a registration New-MailworkerApp.ps1 made for a profile
    (tagged 'mailworker', named other than mailworker-tracking), unless -AllowSendingApp.

    Idempotent: an existing service principal or assignment is reported, not created again. -WhatIf
    shows what would change.

    Required Entra role: one that may grant Microsoft Graph application permissions (Privileged Role
    Administrator or Global Administrator), and Application Administrator (or Cloud Application
    Administrator) to create the Microsoft service principal. Delegated Graph scopes:
    Application.ReadWrite.All, AppRoleAssignment.ReadWrite.All.

.PARAMETER AppId
    Application (client) id of the tracker's app registration (tracking.app.clientId).
.PARAMETER TenantId
    Tenant to connect to (default: the one Connect-MgGraph picks).
.PARAMETER Environment
    Microsoft cloud. Only Global offers the message trace API; any other value stops the script.
.PARAMETER VerifyOnly
    Check the service principal, the Microsoft service principal and the assignment; change nothing.
    Exit code 1 when one is missing.
.PARAMETER AllowSendingApp
    Grant even to an app that also holds Microsoft Graph Mail.* application permissions (not
    recommended: see PRIVACY).

.EXAMPLE
    ./New-MailworkerApp.ps1 -AppName tracking -CreateCertificate -OutputDirectory ./secrets
    ./Grant-MailworkerMessageTrace.ps1 -AppId <appId printed above> -WhatIf
    ./Grant-MailworkerMessageTrace.ps1 -AppId <appId printed above>
.EXAMPLE
    ./Grant-MailworkerMessageTrace.ps1 -AppId 11111111-2222-3333-4444-555555555555 -VerifyOnly
.OUTPUTS
    An object: TrackerServicePrincipalId, MessageTraceServicePrincipalId, AppRoleAssignmentId,
    Ready (all three present).
.NOTES
    Reviewed line by line; never run on a mailworker build machine (no PowerShell there). After it
    succeeds, `mailworker check` verifies that the tracker's token carries the role (a new
    assignment reaches new tokens only: the worker's cached token keeps its roles until it expires).
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [ValidatePattern('^[0-9a-fA-F-]{36}$')]
    [string] $TenantId,

    [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')]
    [string] $Environment = 'Global',

    [switch] $VerifyOnly,

    [switch] $AllowSendingApp
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerEntra.psm1') -Force

# The Microsoft application whose service principal the message trace API needs (exchangeMessageTrace
# resource page, "Prerequisites"; see .DESCRIPTION).
$messageTraceAppId = '8bd644d1-64a1-4d4b-ae52-2e0cbf64e373'
$permission = 'ExchangeMessageTrace.Read.All'

if ($Environment -ne 'Global') {
    throw ("The Graph message trace API exists in the global service only (messagetracingroot-list-messagetraces, " +
        "national cloud table). In $Environment delivery tracking stays off: mailworker logs so and 'mailworker check' warns.")
}

$scopes = if ($VerifyOnly) { @('Application.Read.All') } else { @('Application.ReadWrite.All', 'AppRoleAssignment.ReadWrite.All') }
$null = Connect-MailworkerGraph -Scopes $scopes -TenantId $TenantId -Environment $Environment

# 1. The tracker's own service principal (created by New-MailworkerApp.ps1).
$sp = Get-MgServicePrincipal -Filter "appId eq '$AppId'"
if (-not $sp) {
    throw "No service principal (enterprise application) for app id $AppId in this tenant. Create the app first: ./New-MailworkerApp.ps1 -AppName tracking"
}
Write-Host "Tracker: '$($sp.DisplayName)' (service principal $($sp.Id))."

$graph = Get-GraphServicePrincipal
$roleId = Get-GraphAppRoleId -GraphServicePrincipal $graph -Permission $permission
$assignments = @(Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $sp.Id -All |
        Where-Object { $_.ResourceId -eq $graph.Id })

# 2. Refuse a sending app: the permission is tenant-wide read (see PRIVACY).
# (ForEach-Object, not member enumeration: under StrictMode a property of an empty array throws.)
$mailRoles = @($graph.AppRoles | Where-Object { $_.Value -like 'Mail.*' -and $_.AllowedMemberTypes -contains 'Application' })
$mailRoleIds = @($mailRoles | ForEach-Object { $_.Id })
$heldMail = @($assignments | Where-Object { $_.AppRoleId -in $mailRoleIds })
$heldIds = @($heldMail | ForEach-Object { $_.AppRoleId })
# New-MailworkerApp.ps1 tags every registration it makes 'mailworker'; the tracker's is mailworker-tracking.
$sendingApp = (@($sp.Tags) -contains 'mailworker') -and ($sp.DisplayName -ne 'mailworker-tracking')
if (($heldMail.Count -gt 0 -or $sendingApp) -and -not $AllowSendingApp -and -not $VerifyOnly) {
    $held = @($mailRoles | Where-Object { $_.Id -in $heldIds } | ForEach-Object { $_.Value }) -join ', '
    throw ("'$($sp.DisplayName)' looks like a sending app (" + $(if ($held) { "holds $held" } else { 'a mailworker profile registration' }) +
        "). Give message trace to a separate registration (New-MailworkerApp.ps1 -AppName tracking), or pass -AllowSendingApp knowing that " +
        "whoever holds this app's credential then reads the whole tenant's trace.")
}

# 3. The service principal of Microsoft's message trace application.
$mtSp = Get-MgServicePrincipal -Filter "appId eq '$messageTraceAppId'"
if ($mtSp) {
    Write-Host "Message trace service principal exists (object id $($mtSp.Id))."
}
elseif ($VerifyOnly) {
    Write-Warning "MISSING: the service principal of Microsoft's message trace application $messageTraceAppId (the API answers 401 without it)."
}
elseif ($PSCmdlet.ShouldProcess($messageTraceAppId, 'Provision the service principal of Microsoft''s message trace application')) {
    $mtSp = New-MgServicePrincipal -AppId $messageTraceAppId
    Write-Host "Provisioned the message trace service principal (object id $($mtSp.Id))."
}

# 4. The application permission: an app role assignment on Microsoft Graph.
$grant = $assignments | Where-Object { $_.AppRoleId -eq $roleId } | Select-Object -First 1
if ($grant) {
    Write-Host "$permission is granted (assignment $($grant.Id), $($grant.CreatedDateTime))."
}
elseif ($VerifyOnly) {
    Write-Warning "MISSING: $permission on '$($sp.DisplayName)'."
}
elseif ($PSCmdlet.ShouldProcess($sp.DisplayName, "Grant the Microsoft Graph application permission $permission (tenant-wide)")) {
    $grant = New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $sp.Id -PrincipalId $sp.Id -ResourceId $graph.Id -AppRoleId $roleId
    Write-Host "Granted $permission (assignment $($grant.Id))."
}

$ready = [bool]($mtSp -and $grant)
$result = [pscustomobject]@{
    TrackerServicePrincipalId      = $sp.Id
    MessageTraceServicePrincipalId = if ($mtSp) { $mtSp.Id } else { $null }
    AppRoleAssignmentId            = if ($grant) { $grant.Id } else { $null }
    Ready                          = $ready
}
if ($ready) {
    Write-Host ''
    Write-Host 'Next steps:'
    Write-Host "  1. mailworker config: tracking: {enabled: true, app: {tenantId: <tenant>, clientId: $AppId, credential: ...}}"
    Write-Host '  2. mailworker check   (verifies that the tracker gets a token carrying ExchangeMessageTrace.Read.All)'
}
$result
if ($VerifyOnly -and -not $ready) { exit 1 }
