#Requires -Version 7.4
#Requires -Modules ExchangeOnlineManagement
<#
.SYNOPSIS
    Lets ONE mailworker app registration send mail only as approved shared mailboxes, with Exchange Online
    RBAC for Applications: service principal + management scope + "Application Mail.Send" role assignment.

.DESCRIPTION
    Steps (each checked before it is created, so re-runs are safe; -WhatIf shows the changes):
      1. New-ServicePrincipal -AppId <AppId> -ObjectId <ServicePrincipalObjectId>: registers the app in
         Exchange. ObjectId is the object id of the ENTERPRISE APPLICATION (the service principal, Entra
         admin center > Enterprise applications > the app > Object ID), NOT the object id shown on the
         App registrations blade. New-MailworkerApp.ps1 prints it as ServicePrincipalObjectId. Using the
         app registration's object id creates an Exchange service principal that never matches a token.
      2. Marks the approved mailboxes: either a custom attribute (default CustomAttribute15 =
         'mailworker-<AppName>', set by this script with -SetAttribute) or membership of a mail-enabled
         group (-ScopeGroup; direct members only: MemberOfGroup does not expand nested groups).
      3. New-ManagementScope 'mailworker-<AppName>-mailboxes' -RecipientRestrictionFilter
         "CustomAttribute15 -eq 'mailworker-<AppName>'"  (or "MemberOfGroup -eq '<group DN>'").
      4. New-ManagementRoleAssignment 'mailworker-<AppName>-Mail.Send' -App <ServicePrincipalObjectId>
         -Role 'Application Mail.Send' -CustomResourceScope 'mailworker-<AppName>-mailboxes'.
      5. With -DraftMode (profiles with deliveryMode: draft): New-ManagementRoleAssignment
         'mailworker-<AppName>-Mail.ReadWrite' -App <ServicePrincipalObjectId> -Role 'Application Mail.ReadWrite'
         -CustomResourceScope 'mailworker-<AppName>-mailboxes': the SAME scope as Mail.Send.
      6. Test-ServicePrincipalAuthorization for each mailbox (expects InScope True, for Mail.ReadWrite too
         with -DraftMode).

    THE DRAFT MODE TRADE: "Application Mail.ReadWrite" lets the app read, change and delete any mail in the
    approved mailboxes (only those: the scope bounds it as it bounds Mail.Send). mailworker uses it to
    create a draft, attach large files, send it, look the sent message up and delete drafts left behind.
    Grant it only to profiles that need large attachments or exactly-once sending, and keep the approved
    mailboxes dedicated to sending (no human correspondence in them).

    The app must NOT also hold the tenant-wide Graph Mail.Send permission (Entra admin consent): grants
    from Entra and from Exchange RBAC add up, and the tenant-wide one would let it send as anyone.
    Check with ../entra/Test-TenantWideMailSend.ps1.

    PROPAGATION: the role assignment applies to real Graph calls after 30 minutes to 2 hours;
    Test-ServicePrincipalAuthorization shows it at once. Until then sendMail can return 403
    ErrorAccessDenied. The same delay applies to a mailbox whose attribute or group membership changes.

.PARAMETER AppName
    mailworker app name (profile name); objects are named mailworker-<AppName>...
.PARAMETER AppId
    Application (client) id of the app registration.
.PARAMETER ServicePrincipalObjectId
    Object id of the enterprise application (service principal) in Entra ID - not the app registration's.
.PARAMETER Mailbox
    Approved shared mailboxes (SMTP address or identity) the app may send as.
.PARAMETER AttributeName
    Custom attribute used to mark approved mailboxes (CustomAttribute1..15; default CustomAttribute15).
    Pick one that nothing else in the tenant uses.
.PARAMETER SetAttribute
    Set AttributeName = 'mailworker-<AppName>' on every -Mailbox (otherwise only verified).
.PARAMETER ScopeGroup
    Use membership of this mail-enabled (security) group instead of a custom attribute.
.PARAMETER Force
    Overwrite an attribute that already holds a different value.
.PARAMETER DraftMode
    Also assign "Application Mail.ReadWrite" in the same scope (mailworker deliveryMode: draft).

.EXAMPLE
    ./Grant-MailworkerMailboxScope.ps1 -AppName billing -AppId 1111... -ServicePrincipalObjectId 2222... `
        -Mailbox billing@contoso.com, invoices@contoso.com -SetAttribute
.EXAMPLE
    ./Grant-MailworkerMailboxScope.ps1 -AppName reports -AppId 5555... -ServicePrincipalObjectId 6666... `
        -Mailbox reports@contoso.com -SetAttribute -DraftMode
.EXAMPLE
    ./Grant-MailworkerMailboxScope.ps1 -AppName hr -AppId 3333... -ServicePrincipalObjectId 4444... `
        -ScopeGroup 'mailworker-hr-senders' -Mailbox hr@contoso.com -WhatIf
#>
[CmdletBinding(SupportsShouldProcess, DefaultParameterSetName = 'Attribute')]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$')]
    [string] $AppName,

    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $ServicePrincipalObjectId,

    [Parameter(Mandatory)]
    [ValidateNotNullOrEmpty()]
    [string[]] $Mailbox,

    [Parameter(ParameterSetName = 'Attribute')]
    [ValidateSet('CustomAttribute1', 'CustomAttribute2', 'CustomAttribute3', 'CustomAttribute4', 'CustomAttribute5',
        'CustomAttribute6', 'CustomAttribute7', 'CustomAttribute8', 'CustomAttribute9', 'CustomAttribute10',
        'CustomAttribute11', 'CustomAttribute12', 'CustomAttribute13', 'CustomAttribute14', 'CustomAttribute15')]
    [string] $AttributeName = 'CustomAttribute15',

    [Parameter(ParameterSetName = 'Attribute')]
    [switch] $SetAttribute,

    [Parameter(Mandatory, ParameterSetName = 'Group')]
    [ValidateNotNullOrEmpty()]
    [string] $ScopeGroup,

    [switch] $Force,

    [switch] $DraftMode,

    [string] $Organization
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerExchange.psm1') -Force
Connect-MailworkerExchange -Organization $Organization
$n = Get-MailworkerNames -AppName $AppName

if ($AppId -eq $ServicePrincipalObjectId) { throw 'AppId and ServicePrincipalObjectId are the same: ServicePrincipalObjectId must be the enterprise application object id.' }

# 1. Exchange service principal (pointer to the Entra enterprise application).
$sp = Get-ServicePrincipal -Identity $ServicePrincipalObjectId -ErrorAction SilentlyContinue
if ($sp) {
    if ($sp.AppId -ne $AppId) { throw "Exchange service principal $ServicePrincipalObjectId has AppId $($sp.AppId), not $AppId. Wrong object id?" }
    Write-Host "Exchange service principal '$($sp.DisplayName)' exists."
}
else {
    $other = Get-ServicePrincipal -ErrorAction SilentlyContinue | Where-Object { $_.AppId -eq $AppId }
    if ($other) {
        throw ("An Exchange service principal for AppId $AppId exists with ObjectId $($other.ObjectId), not $ServicePrincipalObjectId. " +
            "If it was created with the app registration object id by mistake, remove it (Remove-ServicePrincipal -Identity $($other.ObjectId)) and re-run.")
    }
    if ($PSCmdlet.ShouldProcess($n.ServicePrincipal, "New-ServicePrincipal -AppId $AppId -ObjectId $ServicePrincipalObjectId")) {
        $sp = New-ServicePrincipal -AppId $AppId -ObjectId $ServicePrincipalObjectId -DisplayName $n.ServicePrincipal
        Write-Host "Created Exchange service principal '$($n.ServicePrincipal)'."
    }
}

# 2. Mark the approved mailboxes.
$mailboxes = @(foreach ($m in $Mailbox) {
    $mbx = Get-Mailbox -Identity $m -ErrorAction SilentlyContinue
    if (-not $mbx) { throw "Mailbox '$m' not found (Graph would answer 404 ErrorInvalidUser / MailboxNotEnabledForRESTAPI)." }
    if ($mbx.RecipientTypeDetails -ne 'SharedMailbox') {
        Write-Warning "$m is a $($mbx.RecipientTypeDetails), not a shared mailbox. The standard approves shared mailboxes only."
    }
    $mbx
})
if ($PSCmdlet.ParameterSetName -eq 'Attribute') {
    foreach ($mbx in $mailboxes) {
        $current = $mbx.$AttributeName
        if ($current -eq $n.AttributeValue) { continue }
        if (-not $SetAttribute) {
            Write-Warning "$($mbx.PrimarySmtpAddress): $AttributeName is '$current', not '$($n.AttributeValue)': it is outside the scope. Re-run with -SetAttribute."
            continue
        }
        if ($current -and -not $Force) { throw "$($mbx.PrimarySmtpAddress): $AttributeName already holds '$current'. Use another -AttributeName, or -Force." }
        if ($PSCmdlet.ShouldProcess($mbx.PrimarySmtpAddress, "Set $AttributeName = '$($n.AttributeValue)'")) {
            $p = @{ Identity = $mbx.Identity; $AttributeName = $n.AttributeValue }
            Set-Mailbox @p
            Write-Host "$($mbx.PrimarySmtpAddress): $AttributeName = '$($n.AttributeValue)'."
        }
    }
    $filter = "$AttributeName -eq '$($n.AttributeValue)'"
}
else {
    $group = Get-Group -Identity $ScopeGroup -ErrorAction SilentlyContinue
    if (-not $group) { throw "Group '$ScopeGroup' not found." }
    # Addresses as strings, collected with ForEach-Object: member access on an empty array is not
    # relied on under Set-StrictMode -Version Latest.
    $memberAddresses = @(Get-DistributionGroupMember -Identity $group.Identity -ResultSize Unlimited -ErrorAction SilentlyContinue |
        ForEach-Object { "$($_.PrimarySmtpAddress)" })
    foreach ($mbx in $mailboxes) {
        if ($memberAddresses -contains "$($mbx.PrimarySmtpAddress)") { continue }
        if ($PSCmdlet.ShouldProcess($ScopeGroup, "Add member $($mbx.PrimarySmtpAddress)")) {
            Add-DistributionGroupMember -Identity $group.Identity -Member $mbx.Identity -BypassSecurityGroupManagerCheck
            Write-Host "Added $($mbx.PrimarySmtpAddress) to $ScopeGroup."
        }
    }
    $filter = "MemberOfGroup -eq '$($group.DistinguishedName)'"
}

# 3. Management scope.
$scope = Get-ManagementScope -Identity $n.Scope -ErrorAction SilentlyContinue
if (-not $scope) {
    if ($PSCmdlet.ShouldProcess($n.Scope, "New-ManagementScope -RecipientRestrictionFilter `"$filter`"")) {
        $scope = New-ManagementScope -Name $n.Scope -RecipientRestrictionFilter $filter
        Write-Host "Created management scope '$($n.Scope)': $filter"
    }
}
elseif ($scope.RecipientFilter -ne $filter) {
    if ($PSCmdlet.ShouldProcess($n.Scope, "Set-ManagementScope filter from `"$($scope.RecipientFilter)`" to `"$filter`"")) {
        Set-ManagementScope -Identity $n.Scope -RecipientRestrictionFilter $filter
        Write-Host "Updated management scope '$($n.Scope)': $filter"
    }
}
else { Write-Host "Management scope '$($n.Scope)' exists: $filter" }

# 4. Role assignment.
$assignment = Get-ManagementRoleAssignment -Identity $n.Assignment -ErrorAction SilentlyContinue
if (-not $assignment) {
    if ($PSCmdlet.ShouldProcess($n.Assignment, "New-ManagementRoleAssignment -App $ServicePrincipalObjectId -Role 'Application Mail.Send' -CustomResourceScope $($n.Scope)")) {
        $assignment = New-ManagementRoleAssignment -Name $n.Assignment -App $ServicePrincipalObjectId -Role 'Application Mail.Send' -CustomResourceScope $n.Scope
        Write-Host "Created role assignment '$($n.Assignment)'."
    }
}
elseif ($assignment.CustomResourceScope -ne $n.Scope) {
    throw "Role assignment '$($n.Assignment)' exists with scope '$($assignment.CustomResourceScope)', not '$($n.Scope)'. Inspect it before changing (Set-ManagementRoleAssignment -CustomResourceScope)."
}
else { Write-Host "Role assignment '$($n.Assignment)' exists." }

# 5. Draft delivery mode: Mail.ReadWrite in the same scope.
if ($DraftMode) {
    $draft = Get-ManagementRoleAssignment -Identity $n.DraftAssignment -ErrorAction SilentlyContinue
    if (-not $draft) {
        if ($PSCmdlet.ShouldProcess($n.DraftAssignment, "New-ManagementRoleAssignment -App $ServicePrincipalObjectId -Role 'Application Mail.ReadWrite' -CustomResourceScope $($n.Scope)")) {
            $draft = New-ManagementRoleAssignment -Name $n.DraftAssignment -App $ServicePrincipalObjectId -Role 'Application Mail.ReadWrite' -CustomResourceScope $n.Scope
            Write-Host "Created role assignment '$($n.DraftAssignment)': the app can now read, change and delete mail in the approved mailboxes."
        }
    }
    elseif ($draft.CustomResourceScope -ne $n.Scope) {
        throw "Role assignment '$($n.DraftAssignment)' exists with scope '$($draft.CustomResourceScope)', not '$($n.Scope)'. It must be the Mail.Send scope; inspect it before changing."
    }
    else { Write-Host "Role assignment '$($n.DraftAssignment)' exists." }
}

# 6. Immediate check (bypasses the permission cache).
if (-not $WhatIfPreference) {
    $results = foreach ($mbx in $mailboxes) {
        $send = Test-MailSendAuthorization -ServicePrincipal $ServicePrincipalObjectId -Mailbox $mbx.PrimarySmtpAddress
        $row = [ordered]@{ Mailbox = $send.Mailbox; MailSend = $send.InScope }
        if ($DraftMode) { $row.MailReadWrite = (Test-MailReadWriteAuthorization -ServicePrincipal $ServicePrincipalObjectId -Mailbox $mbx.PrimarySmtpAddress).InScope }
        [pscustomobject]$row
    }
    $results | Format-Table -AutoSize | Out-Host
    if ($results | Where-Object { -not $_.MailSend -or ($DraftMode -and -not $_.MailReadWrite) }) {
        Write-Warning 'Some approved mailboxes are not in scope yet (attribute or group change not applied, or the filter does not match).'
    }
    $dm = if ($DraftMode) { ' -DraftMode' } else { '' }
    Write-Host "Validate the full scope, including a mailbox that must be denied:"
    Write-Host "  ./Test-MailworkerMailboxScope.ps1 -AppName $AppName -Mailbox $($Mailbox -join ',') -DeniedMailbox <a mailbox outside the scope>$dm"
}
Write-Host ''
Write-Host (Get-MailworkerPropagationNote)
